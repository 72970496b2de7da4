// A small Markdown renderer for the model's replies: fenced code blocks, inline code,
// headings, lists, block quotes, bold, italic, links (http/https only), paragraphs.
// Safety: every piece of text is HTML-escaped before any tag is added, and the only
// tags are the ones written here; a link's URL is escaped and must start with http(s).
"use strict";

const Markdown = (() => {
  function escapeHtml(s) {
    return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
            .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  // inline spans of one line of already-split text; code spans are cut out first so
  // that nothing inside them is formatted
  function inline(text) {
    const parts = text.split(/(`[^`\n]+`)/);
    return parts.map((p, i) => {
      if (i % 2 === 1) return "<code>" + escapeHtml(p.slice(1, -1)) + "</code>";
      let s = escapeHtml(p);
      s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g,
                    (_, label, url) => `<a href="${url}" target="_blank" rel="noopener noreferrer">${label}</a>`);
      s = s.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>");
      s = s.replace(/__([^_\n]+)__/g, "<strong>$1</strong>");
      s = s.replace(/(^|[^*\w])\*([^*\s][^*\n]*?)\*(?!\*)/g, "$1<em>$2</em>");
      s = s.replace(/(^|[^_\w])_([^_\s][^_\n]*?)_(?![_\w])/g, "$1<em>$2</em>");
      return s;
    }).join("");
  }

  function render(src) {
    const lines = src.replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let para = [];
    let list = null;           // {tag: "ul"|"ol", items: []}
    const flushPara = () => {
      if (para.length) out.push("<p>" + para.map(inline).join("<br>") + "</p>");
      para = [];
    };
    const flushList = () => {
      if (list) out.push(`<${list.tag}>` + list.items.map(x => "<li>" + inline(x) + "</li>").join("") + `</${list.tag}>`);
      list = null;
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = line.match(/^\s*(```|~~~)\s*([\w+#.-]*)\s*$/);
      if (fence) {                                     // a code block, maybe unfinished (streaming)
        flushPara(); flushList();
        const body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
        const lang = fence[2] ? ` data-lang="${escapeHtml(fence[2])}"` : "";
        out.push(`<pre${lang}><code>` + escapeHtml(body.join("\n")) + "</code></pre>");
        continue;
      }
      let m;
      if ((m = line.match(/^(#{1,6})\s+(.*)$/))) {
        flushPara(); flushList();
        const n = m[1].length;
        out.push(`<h${n}>` + inline(m[2]) + `</h${n}>`);
      } else if ((m = line.match(/^\s*([-*+])\s+(.*)$/)) || (m = line.match(/^\s*(\d+)[.)]\s+(.*)$/))) {
        flushPara();
        const tag = /\d/.test(m[1]) ? "ol" : "ul";
        if (list && list.tag !== tag) flushList();
        if (!list) list = {tag, items: []};
        list.items.push(m[2]);
      } else if ((m = line.match(/^>\s?(.*)$/))) {
        flushPara(); flushList();
        out.push("<blockquote>" + inline(m[1]) + "</blockquote>");
      } else if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
        flushPara(); flushList();
        out.push("<hr>");
      } else if (!line.trim()) {
        flushPara(); flushList();
      } else {
        flushList();
        para.push(line);
      }
    }
    flushPara(); flushList();
    return out.join("\n");
  }

  return {render, escapeHtml};
})();
