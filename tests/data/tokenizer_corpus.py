"""Strings for the tokenizer tests: hand-written ones across scripts, code, whitespace,
emoji, control-token text and byte fallback, then seeded generated ones (deterministic).

    CORPUS                    every string the parity tests run (at least 300)
    mixed_text(n_bytes)       prose, code, CJK and emoji, for timing the encoder
"""
from __future__ import annotations

import random

PROSE = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you doing today? I'm fine, thanks.",
    "It's a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "\"Quoted,\" she said — 'single quotes' and “curly quotes” and «guillemets».",
    "Dr. Smith (Ph.D.) arrived at 10:30 a.m.; the meeting ended at 5 p.m.",
    "e.g., i.e., etc., vs. — ellipsis… and en–dash.",
    "ALL CAPS SENTENCE WITH SOME Mixed Case and camelCase and snake_case_words.",
    "Les élèves étaient déjà là, où ça ? À bientôt, garçon !",
    "Größenwahn auf der Straße: übermäßig viele Äpfel und Öl.",
    "¿Dónde está el niño? ¡Mañana será otro día!",
    "Não há ação sem reação; a coração é português.",
    "Zażółć gęślą jaźń.",
    "Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Tiếng Việt có dấu: Xin chào, tôi là người Việt Nam.",
    "İstanbul'da ışık; ğüşiöç ĞÜŞİÖÇ.",
    "Þetta er íslenska: ð þ æ ö.",
    "Știință și țară, în România.",
    "Decomposed: e\u0301 a\u0308 o\u0302 n\u0303 and Z\u0338\u0322a\u0335l\u0337g\u0336o\u0334.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ґанок, їжак, єнот — українська мова.",
    "Љубав, њива, ђак, ћерка, џеп — српски.",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "Ἐν ἀρχῇ ἦν ὁ λόγος, καὶ ὁ λόγος ἦν πρὸς τὸν θεόν.",
    "مرحبا بالعالم، كيف حالك؟",
    "بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ",
    "سلام دنیا، حال شما چطور است؟",
    "یہ اردو زبان ہے۔",
    "שלום עולם, מה שלומך?",
    "בְּרֵאשִׁית בָּרָא אֱלֹהִים אֵת הַשָּׁמַיִם",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "আমি বাংলায় গান গাই।",
    "வணக்கம் உலகம்",
    "నమస్కారం ప్రపంచం",
    "ગુજરાતી ભાષા",
    "ਪੰਜਾਬੀ ਬੋਲੀ",
    "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "ສະບາຍດີ",
    "សួស្តីពិភពលោក",
    "မင်္ဂလာပါ",
    "Jamo: \u1100\u1161\u11a8 \u3131\u314f",
    "გამარჯობა მსოფლიო",
    "Բարեւ աշխարհ",
    "ሰላም ልዑል",
    "བོད་སྐད་",
    "ᐃᓄᒃᑎᑐᑦ ᏣᎳᎩ",
    "ᠮᠣᠩᠭᠣᠯ",
    "∀x∈ℝ: x² ≥ 0, ∑_{i=1}^{n} i = n(n+1)/2, ∫₀^∞ e^{-x} dx = 1",
    "$\\frac{a}{b} + \\sqrt{x^2 + y^2} \\leq \\alpha\\beta$",
    "𝔹𝕆𝕃𝔻 𝓈𝒸𝓇𝒾𝓅𝓉 𝐛𝐨𝐥𝐝",
    "½ ¾ ⅓ № ™ © ® ° ± × ÷ ≠ ≈ ∞ → ← ↔ ⇒",
]

CJK = [
    "我们今天去公园散步，天气非常好。",
    "臺灣的繁體中文字，與簡體字不同。",
    "今日はいい天気ですね。カタカナとひらがな、そして漢字。",
    "ｶﾀｶﾅ ＡＢＣ１２３ （全角）",
    "안녕하세요, 세계! 한국어 텍스트입니다.",
]

CODE = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "import numpy as np\n\nx = np.zeros((3, 4), dtype=np.float32)  # [3, 4]\nprint(x.shape)\n",
    "class Foo(Bar):\n\tdef __init__(self, *args, **kwargs):\n\t\tsuper().__init__(*args, **kwargs)\n",
    "const add = (a, b) => a + b;\nconsole.log(`sum: ${add(1, 2)}`);\n",
    "function f() {\r\n  return { a: 1, b: [2, 3] };\r\n}\r\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "#include <stdio.h>\nint main(void) {\n    printf(\"hello\\n\");\n    return 0;\n}\n",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
    "public static void main(String[] args) { System.out.println(\"Hi\"); }",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done\n",
    "<!DOCTYPE html>\n<html>\n<head><title>Page</title></head>\n<body>\n<div class=\"x\"><p>Hello</p></div>\n</body>\n</html>\n",
    "<table><tr><td>1</td><td>2</td></tr></table>",
    "<b>bold</b> <i>italic</i> <u>u</u> <s>strike</s> <code>x = 1</code>",
    "<h1>Title</h1>\n<h2>Sub</h2>\n<ul><li>one</li><li>two</li></ul>",
    "&amp; &lt; &gt; &quot; &#39; &nbsp;",
    "body { margin: 0; padding: 0 1rem; color: #333; }\n.a > .b:hover { color: red; }",
    "{\"name\": \"Alice\", \"age\": 30, \"tags\": [\"a\", \"b\"], \"nested\": {\"x\": null, \"y\": true}}",
    "key: value\nlist:\n  - one\n  - two\nnested:\n  a: 1\n",
    "# Heading\n\nSome *emphasis* and **strong** text.\n\n- item 1\n- item 2\n\n```python\nprint('hi')\n```\n",
    "| a | b |\n|---|---|\n| 1 | 2 |\n",
    "> quote\n>> nested quote\n\n1. first\n2. second\n",
    "^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$",
    "mov eax, 1\nxor ebx, ebx\nint 0x80\n",
    "main :: IO ()\nmain = mapM_ print [x * 2 | x <- [1..10], even x]\n",
    "(defun square (x) (* x x))\n(mapcar #'square '(1 2 3))",
    "--- a/file.py\n+++ b/file.py\n@@ -1,3 +1,3 @@\n-old line\n+new line\n context\n",
    "if (a && b || !c) { x += 1; } else if (y != 0) { z <<= 2; }",
    "    indented with four spaces\n        and eight\n            and twelve\n",
    "\t\tdeep\t\ttabs\t\n\t\t\t\ttab run",
]

SPECIAL = [
    "<start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "[multimodal]",
    "<start_of_image>", "<end_of_image>", "<start_of_image><end_of_image>",
    "Look: <start_of_image> and describe it.",
    "<unused0>", "<unused6241>", "<unused99999>", "<unused>",
    "<start_of_tur", "start_of_turn>", "<<bos>>", "<bos><bos><eos>",
    "text<end_of_turn>text", "<start_of_turn> user", "<Start_Of_Turn>", "< bos >",
    "<0x41>", "<0xZZ>", "<0x0A>\n",
]

WHITESPACE = [
    "", " ", "  ", "   ", " " * 31, " " * 32, " " * 40, " " * 100,
    "\t", "\t\t", "\t" * 31, "\t" * 35, "\n", "\n\n", "\n" * 31, "\n" * 32, "\n" * 100,
    "\r\n", "\r\n\r\n", "\r", "\r\r\n\n", " \n ", "\n \n", "\t \t", "a \t b", "\v\f",
    "\u00a0", "a\u00a0b", "\u3000", "\u2003", "\u200b", "\ufeff", "zero\u200bwidth",
    " hello", "hello ", "  hello  world  ", "   leading three", "trailing three   ",
    "a  b   c    d     e", "word\n\nword\n\n\nword", "x\t\ty", " \t\n\r ",
    "> </", ">  </", "a > </b>", "x>▁</y",
    "▁", "▁▁", "a▁b", "▁hello▁", "▁ ▁", " ▁ ",
]

EMOJI = [
    "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "🇯🇵🇺🇸🇩🇪", "🧑🏿\u200d💻", "1️⃣ #️⃣",
    "❤️\u200d🔥", "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
    "I ❤️ emoji 🎉🎉🎉 so much!!! 😂😂",
    "new emoji, not in the vocabulary: 🫨🪿🫎 🛜 🧌",
]

SYMBOLS = [
    "12345678901234567890", "3.14159265358979", "1,000,000.00", "-0.5e-10", "0xDEADBEEF",
    "٣٤٥ ١٢٣", "१२३४", "2024-01-31T23:59:59Z", "+1 (555) 123-4567",
    "https://example.com/path/to/page?q=1&r=%20x#frag",
    "user.name+tag@example.org", "C:\\Users\\name\\file.txt", "/usr/local/bin/python3",
    "aaaaaaaaaa", "ababababab", "xxxxxx", "xxxxxxxxxxxxxxxxxxxxxxxx", "........", "------",
    "=====", "!!!!!!", "??!!", "~~~***___", "(((())))", "[[[]]]", "{{{}}}",
    "\x00", "\x07", "a\x00b\x01c", "\x1b[31mred\x1b[0m", "\x7f\x80\x9f", "\ue000\ue001",
    "\U000f0000", "\U0010fffd", "𠀀𪜀𫝀𬺰", "\U00030000\U00031350", "\ufffd", "\uffff\ufffe",
    "rare: 𠀀 in text 𪜀 and 𫝀", "ⓐⓑⓒ ⑴⑵⑶", "ℌ𝔢𝔩𝔩𝔬",
]


def _long_strings() -> list[str]:
    """Strings of 20k+ characters: prose, CJK, code, and everything mixed."""
    rng = random.Random(1)
    prose = " ".join(rng.choice(PROSE[:7]) for _ in range(400))
    cjk = "".join(rng.choice(CJK) for _ in range(1300))
    code = "\n".join(rng.choice(CODE) for _ in range(350))
    mixed = "".join(rng.choice(PROSE + CJK + CODE + SPECIAL + EMOJI + SYMBOLS + WHITESPACE)
                    for _ in range(1200))
    return [prose, cjk, code, mixed, "a" * 25000, " " * 20001 + "x", "😀" * 20000]


# building blocks of the generated strings
_FRAGMENTS = (
    [w for s in PROSE + CJK for w in s.split()] + ["<start_of_turn>", "<end_of_turn>", "<bos>",
    "<start_of_image>", "<b>", "</td>", "\n", "\n\n", "\t", "\r\n", " ", "  ", "   ", "▁",
    "😀", "👍🏽", "🇫🇷", "\x00", "\ue000", "𠀀", "0", "42", "3.14", "http://x.io", "{", "}",
    "(", ")", ";", "=>", "::", "->", "'", "\"", "`", ">", "</"]
)
# code point ranges for random characters: ASCII, Latin, Cyrillic, Greek, Arabic, Devanagari,
# Thai, CJK, Hangul, emoji, private use, CJK extension B
_RANGES = [(0x20, 0x7e), (0xc0, 0x24f), (0x400, 0x4ff), (0x370, 0x3ff), (0x600, 0x6ff),
           (0x900, 0x97f), (0xe00, 0xe7f), (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0x1f300, 0x1f64f),
           (0xe000, 0xe0ff), (0x20000, 0x2a6df), (0x0, 0x1f)]


def _generated() -> list[str]:
    rng = random.Random(0)
    out = []
    for _ in range(120):        # fragments glued with and without separators
        n = rng.randint(1, 40)
        sep = rng.choice(["", " ", " ", "\n", "  "])
        out.append(sep.join(rng.choice(_FRAGMENTS) for _ in range(n)))
    for _ in range(60):         # random characters, mostly from one or two scripts
        ranges = rng.sample(_RANGES, rng.randint(1, 2))
        n = rng.randint(1, 80)
        out.append("".join(chr(rng.randint(*rng.choice(ranges))) if rng.random() > 0.15
                           else rng.choice(" \n\t") for _ in range(n)))
    units = [" ", "\t", "\n", "\r\n", "a", "▁", "<", ">"]
    for _ in range(40):         # whitespace and punctuation runs
        out.append("".join(rng.choice(units) * rng.randint(1, 5) for _ in range(rng.randint(1, 8))))
    return out


CORPUS: list[str] = (PROSE + CJK + CODE + SPECIAL + WHITESPACE + EMOJI + SYMBOLS
                     + _long_strings() + _generated())


def mixed_text(n_bytes: int = 1_000_000, seed: int = 0) -> str:
    """About `n_bytes` of UTF-8: varied prose in several languages, code, CJK and emoji,
    with random numbers and identifiers so the encoder's piece cache does not do all the work."""
    rng = random.Random(seed)
    words = [w for s in PROSE + CJK for w in s.split()]
    parts, size = [], 0
    while size < n_bytes:
        kind = rng.random()
        if kind < 0.45:         # prose with numbers and made-up words
            s = " ".join(rng.choice(words) if rng.random() > 0.1 else
                         rng.choice([str(rng.randint(0, 10**6)),
                                     "".join(rng.choice("bcdfghklmnprstvz aeiou") for _ in range(7))])
                         for _ in range(rng.randint(5, 40))) + "\n"
        elif kind < 0.75:       # code with random identifiers
            name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(3, 12)))
            s = rng.choice(CODE).replace("x", name).replace("a", name[:3])
        elif kind < 0.95:       # CJK sentences and random common ideographs
            s = rng.choice(CJK) + "".join(chr(rng.randint(0x4e00, 0x9fa5))
                                                   for _ in range(rng.randint(5, 60))) + "。\n"
        else:                   # emoji
            s = " ".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 20))) + "\n"
        parts.append(s)
        size += len(s.encode("utf-8"))
    return "".join(parts)
