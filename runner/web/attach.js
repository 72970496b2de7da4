// Image attach for vision models: a button and thumbnails in #attach-slot (shown when
// /props reports vision). Each picked image is read as a data: URL into
// window.gemmaAttachments, which app.js sends as image_url parts of the next message.
"use strict";

(function () {
  const MAX_BYTES = 20 * 1024 * 1024;           // the server refuses larger images
  window.gemmaAttachments = window.gemmaAttachments || [];

  function slot() { return document.getElementById("attach-slot"); }

  function render() {
    const box = slot().querySelector(".thumbs");
    box.textContent = "";
    window.gemmaAttachments.forEach((url, i) => {
      const item = document.createElement("span");
      item.className = "thumb";
      const img = document.createElement("img");
      img.src = url;
      img.alt = "attached image " + (i + 1);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.title = "Remove this image";
      remove.onclick = () => { window.gemmaAttachments.splice(i, 1); render(); };
      item.append(img, remove);
      box.appendChild(item);
    });
  }

  function add(file) {
    const note = slot().querySelector(".attach-note");
    if (!file.type.startsWith("image/")) { note.textContent = file.name + ": not an image"; return; }
    if (file.size > MAX_BYTES) { note.textContent = file.name + ": larger than 20 MB"; return; }
    const reader = new FileReader();
    reader.onload = () => { note.textContent = ""; window.gemmaAttachments.push(reader.result); render(); };
    reader.onerror = () => { note.textContent = file.name + ": cannot be read"; };
    reader.readAsDataURL(file);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const box = slot();
    box.innerHTML = '<label class="attach-button">Attach image<input id="attach-input" type="file" ' +
      'accept="image/*" multiple hidden></label><span class="thumbs"></span><span class="attach-note"></span>';
    box.querySelector("input").addEventListener("change", (e) => {
      for (const f of e.target.files) add(f);
      e.target.value = "";                      // picking the same file again works
    });
  });
  // app.js empties the list when a message takes the images: keep the thumbnails in step
  window.gemmaAttachmentsSent = render;
})();
