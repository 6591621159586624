r"""Chat templates that reproduce the C2F seed's prompts exactly (method.md §7.1), for converted checkpoints.

The seed's drivers build the user message as ``"<image>\n" + question + "\n"``; these Jinja templates give the same
strings through ``tokenizer.apply_chat_template`` when the message content is ``"<image>\n" + question`` (what
:meth:`lrs_plugin.backbone.Backbone.build_prompt` passes) or processor-style parts.
"""

from __future__ import annotations

__all__ = ["QWEN2_CHAT_TEMPLATE", "VICUNA_V1_CHAT_TEMPLATE"]

_IMAGE = "<image>"
_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# One message's text: a plain string, or processor-style parts (image -> "<image>\n", text parts verbatim).
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\\n' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)
QWEN2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}" + _CONTENT + "{% if "
    "message['role'] == 'user' %}{{ '\\n' }}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""LLaVA-NeXT ``qwen_1_5`` (ChatML) as the seed's driver fills it: every user message ends with ``"\n"``."""

VICUNA_V1_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '" + _VICUNA_SYSTEM.replace("'", "\\'") + " ' }}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}" + _CONTENT + "{{ ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' }}" + _CONTENT + "{{ '\\n ' }}"
    "{% else %}{{ 'ASSISTANT: ' }}" + _CONTENT + "{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
"""LLaVA ``vicuna_v1`` (separators ``" "`` / ``eos``) as the seed's driver fills it (user message + ``"\n"``)."""
