// The page: a Chat tab over /v1/chat/completions and a Completion tab over
// /v1/completions, both streamed (SSE over fetch), with prefill progress
// (return_progress), stop, regenerate, clear and settings kept in localStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const store = {
  get: (k, d) => { try { const v = localStorage.getItem("gemma." + k); return v === null ? d : JSON.parse(v); } catch { return d; } },
  set: (k, v) => { try { localStorage.setItem("gemma." + k, JSON.stringify(v)); } catch { /* private mode */ } },
};

// -- settings ------------------------------------------------------------------------------

const settings = {
  system: () => $("system-prompt").value.trim(),
  temperature: () => { const t = parseFloat($("temperature").value); return isFinite(t) ? Math.min(Math.max(t, 0), 2) : 0.7; },
  maxTokens: () => { const n = parseInt($("max-tokens").value, 10); return n > 0 ? n : 256; },
};

function loadSettings() {
  $("system-prompt").value = store.get("system", "");
  $("temperature").value = store.get("temperature", 0.7);
  $("max-tokens").value = store.get("maxTokens", 256);
  $("api-key").value = store.get("apiKey", "");
  for (const [id, key] of [["system-prompt", "system"], ["temperature", "temperature"], ["max-tokens", "maxTokens"], ["api-key", "apiKey"]])
    $(id).addEventListener("change", () => store.set(key, $(id).value));
}

function toggleSettings(open) {
  const panel = $("settings");
  panel.hidden = open === undefined ? !panel.hidden : !open;
  $("tab-settings").setAttribute("aria-expanded", String(!panel.hidden));
}

function notice(text) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

// -- the API ------------------------------------------------------------------------------

class APIError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorOf(resp) {
  let message = `HTTP ${resp.status}`, code = null;
  try {
    const body = await resp.json();
    if (body.error && body.error.message) { message = body.error.message; code = body.error.code; }
  } catch { /* not JSON */ }
  if (resp.status === 401) {
    $("api-key-row").hidden = false;
    toggleSettings(true);
    message += " (enter the server's API key in the settings)";
  }
  return new APIError(resp.status, message, code);
}

// POST `body` to `path` and call onEvent(obj) for every SSE data object; resolves when
// the stream ends, rejects with APIError on an HTTP or in-stream error
async function streamPost(path, body, signal, onEvent) {
  const resp = await fetch(path, {method: "POST", headers: headers(), body: JSON.stringify(body), signal});
  if (!resp.ok) throw await errorOf(resp);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const obj = JSON.parse(data);
        if (obj.error) throw new APIError(500, obj.error.message);
        onEvent(obj);
      }
    }
  }
}

function progressText(p) {
  const todo = p.total - p.cache;
  if (todo <= 0) return "processing prompt…";
  const pct = Math.floor(100 * (p.processed - p.cache) / todo);
  return `processing prompt… ${pct}% (${p.processed} / ${p.total} tokens)`;
}

function timingText(t) {
  if (!t) return "";
  const parts = [];
  if (t.prompt_n) parts.push(`prompt ${t.prompt_n} tok, ${t.prompt_per_second.toFixed(0)} tok/s`);
  parts.push(`${t.predicted_n} tok, ${t.predicted_per_second.toFixed(1)} tok/s`);
  return parts.join(" · ");
}

// -- chat ---------------------------------------------------------------------------------

const chat = {
  dropped: store.get("dropped", 0),      // the oldest messages no longer sent (the context is full)
  messages: store.get("messages", []),   // {role, content} as sent to the API
  controller: null,
  hint: "Type a message below to start.",
};

function messageNode(role, content) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const body = document.createElement("div");
  body.className = "body";
  setContent(body, role, content);
  div.appendChild(body);
  return div;
}

function setContent(body, role, content) {
  if (role === "assistant") { body.innerHTML = Markdown.render(content); return; }
  if (typeof content === "string") { body.textContent = content; return; }   // shown as typed
  body.textContent = "";
  for (const p of content) {
    if (p.type === "image_url") {
      const img = document.createElement("img");
      img.className = "sent-image";
      img.src = p.image_url.url;
      img.alt = "image";
      body.appendChild(img);
    } else {
      const t = document.createElement("div");
      t.textContent = p.text;
      body.appendChild(t);
    }
  }
}

function renderChat() {
  const box = $("messages");
  box.textContent = "";
  chat.messages.forEach((m, i) => {
    const node = messageNode(m.role, m.content);
    if (i < chat.dropped) node.classList.add("dropped");       // shown, no longer sent
    box.appendChild(node);
  });
  if (!chat.messages.length) {
    const hint = document.createElement("div");
    hint.className = "empty";
    hint.textContent = chat.hint;
    box.appendChild(hint);
  }
  box.scrollTop = box.scrollHeight;
}

function setBusy(prefix, busy) {
  $(prefix === "chat" ? "send" : "complete").disabled = busy;
  $(prefix === "chat" ? "stop" : "completion-stop").hidden = !busy;
}

// the content of a new user message: the images attach.js collected, then the text
// (an image before the words that ask about it, as Gemma 3's processor lays it out)
function userContent(text) {
  const images = window.gemmaAttachments || [];
  if (!images.length) return text;
  const parts = images.map(url => ({type: "image_url", image_url: {url}}));
  parts.push({type: "text", text});
  window.gemmaAttachments = [];
  if (window.gemmaAttachmentsSent) window.gemmaAttachmentsSent();
  return parts;
}

async function sendChat(text) {
  if (chat.controller) return;
  if (text !== null) chat.messages.push({role: "user", content: userContent(text)});
  store.set("messages", chat.messages);
  renderChat();
  const reply = messageNode("assistant", "");
  reply.classList.add("streaming");
  $("messages").appendChild(reply);
  const body = reply.querySelector(".body");
  const status = $("chat-status");
  const sys = settings.system();
  let content = "";
  let finish = null, timings = null;
  chat.controller = new AbortController();
  setBusy("chat", true);
  status.textContent = "waiting for the model…";
  try {
    await sendFitting(sys, (messages) => streamPost("/v1/chat/completions", {
      messages, stream: true, return_progress: true,
      temperature: settings.temperature(), max_tokens: settings.maxTokens(),
    }, chat.controller.signal, (ev) => {
      if (ev.prompt_progress) { status.textContent = progressText(ev.prompt_progress); return; }
      const choice = ev.choices && ev.choices[0];
      if (!choice) return;
      if (choice.delta && choice.delta.content) {
        if (!content) status.textContent = "generating…";
        content += choice.delta.content;
        setContent(body, "assistant", content);
        $("messages").scrollTop = $("messages").scrollHeight;
      }
      if (choice.finish_reason) { finish = choice.finish_reason; timings = ev.timings; }
    }));
    status.textContent = timingText(timings) + (finish === "length" ? " · stopped at the token limit" : "");
  } catch (e) {
    if (e.name === "AbortError") status.textContent = "stopped";
    else { status.textContent = ""; notice(e.message); }
  } finally {
    chat.controller = null;
    reply.classList.remove("streaming");
    setBusy("chat", false);
  }
  if (content) {
    chat.messages.push({role: "assistant", content});
    store.set("messages", chat.messages);
  } else if (!finish) {
    reply.remove();
  }
}

// send the conversation (the system prompt, then the messages not yet dropped); while the
// server says it no longer fits the context, drop its oldest exchange (the system prompt
// stays) and try again, saying so
async function sendFitting(sys, send) {
  for (;;) {
    const messages = (sys ? [{role: "system", content: sys}] : []).concat(chat.messages.slice(chat.dropped));
    try {
      return await send(messages);
    } catch (e) {
      const next = chat.messages.findIndex((m, i) => i > chat.dropped && m.role === "user");
      if (e.code !== "context_length_exceeded" || next < 0) throw e;
      chat.dropped = next;
      store.set("dropped", chat.dropped);
      notice(`The conversation is longer than the model's context: the oldest ${chat.dropped} ` +
             `message${chat.dropped > 1 ? "s are" : " is"} no longer sent (the system prompt is).`);
      // grey them out in place (re-rendering would drop the reply being streamed)
      $("messages").querySelectorAll(".msg").forEach((n, i) => n.classList.toggle("dropped", i < chat.dropped));
    }
  }
}

function regenerate() {
  if (chat.controller) return;
  while (chat.messages.length && chat.messages[chat.messages.length - 1].role === "assistant") chat.messages.pop();
  if (!chat.messages.length) return;
  sendChat(null);
}

function clearChat() {
  if (chat.controller) chat.controller.abort();
  chat.messages = [];
  chat.dropped = 0;
  store.set("messages", chat.messages);
  store.set("dropped", 0);
  renderChat();
  $("chat-status").textContent = "";
  notice("");
}

// -- completion ---------------------------------------------------------------------------

const completion = {controller: null};

async function runCompletion() {
  if (completion.controller) return;
  const prompt = $("completion-prompt").value;
  if (!prompt) return;
  store.set("completionPrompt", prompt);
  const out = $("completion-output");
  const gen = out.querySelector(".generated");
  out.querySelector(".prompt-echo").textContent = prompt;
  gen.textContent = "";
  const status = $("completion-status");
  completion.controller = new AbortController();
  setBusy("completion", true);
  status.textContent = "waiting for the model…";
  let timings = null, finish = null;
  try {
    await streamPost("/v1/completions", {
      prompt, stream: true, return_progress: true,
      temperature: settings.temperature(), max_tokens: settings.maxTokens(),
    }, completion.controller.signal, (ev) => {
      if (ev.prompt_progress) { status.textContent = progressText(ev.prompt_progress); return; }
      const choice = ev.choices && ev.choices[0];
      if (!choice) return;
      if (choice.text) { status.textContent = "generating…"; gen.textContent += choice.text; }
      if (choice.finish_reason) { finish = choice.finish_reason; timings = ev.timings; }
    });
    status.textContent = timingText(timings) + (finish === "length" ? " · stopped at the token limit" : "");
  } catch (e) {
    if (e.name === "AbortError") status.textContent = "stopped";
    else { status.textContent = ""; notice(e.message); }
  } finally {
    completion.controller = null;
    setBusy("completion", false);
  }
}

function useCompletion() {
  const out = $("completion-output");
  const text = out.querySelector(".prompt-echo").textContent + out.querySelector(".generated").textContent;
  if (text) $("completion-prompt").value = text;
}

// -- wiring -------------------------------------------------------------------------------

function showTab(name) {
  for (const t of ["chat", "completion"]) {
    $("tab-" + t).setAttribute("aria-selected", String(t === name));
    $("panel-" + t).hidden = t !== name;
  }
  store.set("tab", name);
}

async function loadProps() {
  try {
    const resp = await fetch("/props", {headers: headers()});
    if (!resp.ok) { if (resp.status === 401) await errorOf(resp); return; }
    const props = await resp.json();
    $("model-name").textContent = props.model_name || props.model || "";
    if (props.api_key_required) $("api-key-row").hidden = false;
    if (!props.has_chat_template) {
      chat.hint = "This is a base model (its file has no chat template): replies use Gemma's turn format " +
        "and may wander. The Completion tab, which continues a text, suits it better.";
      if (!chat.messages.length) renderChat();
    }
    if (props.modalities && props.modalities.vision) $("attach-slot").hidden = false;
  } catch { /* the page still works without it */ }
}

function init() {
  loadSettings();
  renderChat();
  $("completion-prompt").value = store.get("completionPrompt", "");
  for (const b of document.querySelectorAll("nav [data-tab]")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("tab-settings").addEventListener("click", () => toggleSettings());
  $("chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || chat.controller) return;
    $("chat-input").value = "";
    notice("");
    sendChat(text);
  });
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => chat.controller && chat.controller.abort());
  $("regenerate").addEventListener("click", regenerate);
  $("clear").addEventListener("click", clearChat);
  $("complete").addEventListener("click", () => { notice(""); runCompletion(); });
  $("completion-stop").addEventListener("click", () => completion.controller && completion.controller.abort());
  $("completion-use").addEventListener("click", useCompletion);
  showTab(store.get("tab", "chat"));
  loadProps();
}

init();
