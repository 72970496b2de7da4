"""Jinja chat templates (runner.chat.render with a template string).

References: Gemma 3's official template (tests/data/gemma3_chat_template.jinja, as in
google/gemma-3-*-it tokenizer_config.json and the GGUF files made from them) must give
exactly the built-in render_gemma's text; transformers' own renderer
(render_jinja_template, what apply_chat_template uses) is the reference for templates in
general."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from runner.chat import ChatError, ImageRef, render, render_gemma

GEMMA3 = (Path(__file__).parent / "data" / "gemma3_chat_template.jinja").read_text()

# ChatML with the features templates lean on: namespace(), loop controls, tojson, slicing
CHATML = """{%- set ns = namespace(n=0) -%}
{{ bos_token }}
{%- for m in messages %}
{%- if m['role'] == 'tool' %}{% continue %}{% endif %}
{%- set ns.n = ns.n + 1 %}
<|im_start|>{{ m['role'] }}
{{ m['content'] | trim }}<|im_end|>
{% if m.get('meta') %}{{ m['meta'] | tojson }}
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}{{ '(' ~ ns.n ~ ')' }}"""

CHATS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "  What is 2+2?\n"}],
    [{"role": "system", "content": "You are a pirate.\n"}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Ahoy!\n"}, {"role": "user", "content": "Where is the gold? ü 中文 🙂"}],
    [{"role": "user", "content": [{"type": "text", "text": "Two parts: "}, {"type": "text", "text": " here."}]},
     {"role": "assistant", "content": "Yes."}],
    [{"role": "user", "content": "<start_of_turn> written out, and {{ braces }}"}],
]


def text_of(pieces) -> str:
    return "".join(p if isinstance(p, str) else "<start_of_image>" for p in pieces)


@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("i", range(len(CHATS)))
def test_gemma3_template_equals_the_builtin_format(i, gen):
    msgs = CHATS[i]
    assert render(msgs, GEMMA3, gen) == render_gemma(msgs, gen)


@pytest.mark.parametrize("template", [GEMMA3, CHATML], ids=["gemma3", "chatml"])
@pytest.mark.parametrize("i", range(len(CHATS)))
def test_rendering_equals_transformers(template, i):
    msgs = CHATS[i]
    for gen in (True, False):
        (ref,), _ = render_jinja_template([msgs], chat_template=template, add_generation_prompt=gen,
                                          bos_token="<bos>", eos_token="<eos>")
        assert text_of(render(msgs, template, gen)) == ref


def test_tojson_and_extra_message_fields_reach_the_template():
    msgs = [{"role": "user", "content": "x", "meta": {"a": "é<b>", "n": [1, 2]}}]
    (ref,), _ = render_jinja_template([msgs], chat_template=CHATML, add_generation_prompt=True,
                                      bos_token="<bos>", eos_token="<eos>")
    got = text_of(render(msgs, CHATML))
    assert got == ref and '{"a": "é<b>", "n": [1, 2]}' in got


def test_images_become_slots_in_order():
    msgs = [{"role": "system", "content": "Look."},
            {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "and"},
                                         {"type": "image_url", "image_url": {"url": "data:b"}}, {"type": "text", "text": "?"}]}]
    got = render(msgs, GEMMA3)
    assert got == render_gemma(msgs)
    assert [p for p in got if isinstance(p, ImageRef)] == [ImageRef("a.png"), ImageRef("data:b")]


def test_gemma_name_is_the_builtin():
    assert render(CHATS[2], "gemma") == render_gemma(CHATS[2])


@pytest.mark.parametrize("msgs, needle", [
    ([{"role": "assistant", "content": "first"}], "roles must alternate"),
    ([{"role": "user", "content": 7}], "content"),
    ([], "non-empty"),
    ([{"content": "no role"}], "role"),
])
def test_template_errors_are_chat_errors(msgs, needle):
    with pytest.raises(ChatError, match=needle):
        render(msgs, GEMMA3)


def test_syntax_error_names_the_line():
    with pytest.raises(ChatError, match=r"line 2"):
        render(CHATS[0], "{{ bos_token }}\n{% if %}")


@pytest.mark.parametrize("evil", [
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__base__ }}",
    "{% set x = messages.append(1) %}",
])
def test_the_sandbox_refuses_escapes(evil):
    with pytest.raises(ChatError):
        render(CHATS[0], evil)


def test_llm_chat_prompt_with_the_template_equals_builtin(llm):
    """The same tokens through the LLM: the file's template or the built-in format."""
    msgs = CHATS[2]
    builtin = llm.chat_prompt(msgs).tokens
    assert llm.chat_prompt(msgs, GEMMA3).tokens == builtin
    assert builtin[0] == llm.tokenizer.bos_id and builtin.count(llm.tokenizer.bos_id) == 1


def test_chat_prompt_has_exactly_one_bos(llm):
    """Whether or not the template writes bos_token, the prompt starts with one BOS."""
    messages = [{"role": "user", "content": "Hi"}]
    for template in ("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
                     "{% for m in messages %}{{ m.content }}{% endfor %}", "gemma"):
        ids = llm.chat_prompt(messages, template).tokens
        assert ids[0] == llm.tokenizer.bos_id and llm.tokenizer.bos_id not in ids[1:], template
