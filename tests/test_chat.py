"""Chat templates render as transformers' apply_chat_template renders them, from GGUF metadata and Hugging Face
folders (tokenizer_config.json's chat_template, chat_template.jinja); a template that fails is a clear error."""

from __future__ import annotations

import json

import pytest

transformers = pytest.importorskip("transformers")

from ragctx import RagctxError  # noqa: E402
from ragctx.generator.chat import ChatTemplate  # noqa: E402

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
ALTERNATE = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
             "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}{% endif %}"
             "{{ '[INST] ' + m['content'] + ' [/INST]' if m['role'] == 'user' else m['content'] + eos_token }}"
             "{% endfor %}")
CONTROLS = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}"
            "{% endif %}{% set ns.n = ns.n + 1 %}{{ m['content'] | tojson }}\n{% endfor %}{{ ns.n }}"
            "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
            "{% endgeneration %}{% endif %}{% endfor %}")
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "alternate": ALTERNATE, "controls": CONTROLS}
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi, café ✓  "},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": 'Say "ok".'}],
]


def hf_tokenizer(template: str):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<unk>": 0, "<s>": 1, "</s>": 2}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", chat_template=template)


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_rendering_matches_transformers(name, generation_prompt):
    ref = hf_tokenizer(TEMPLATES[name])
    ours = ChatTemplate(TEMPLATES[name], {"bos_token": "<s>", "eos_token": "</s>"})
    for chat in CHATS:
        if name == "alternate" and chat[0]["role"] == "system":
            with pytest.raises(Exception):
                ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)
            with pytest.raises(RagctxError, match="roles must alternate"):
                ours.render(chat, add_generation_prompt=generation_prompt)
            continue
        expected = ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)
        assert ours.render(chat, add_generation_prompt=generation_prompt) == expected


def test_bad_templates_and_messages_are_clear_errors():
    with pytest.raises(RagctxError, match="not valid Jinja"):
        ChatTemplate("{% for m in messages %}{{ m }", where="model.gguf")
    t = ChatTemplate(CHATML)
    for bad in ([], "hello", [{"role": "user"}], [{"role": "user", "content": 3}]):
        with pytest.raises(RagctxError, match="messages"):
            t.render(bad)
    with pytest.raises(RagctxError, match="failed to render"):
        ChatTemplate("{{ messages[5]['content'].upper() }}").render(CHATS[0])


@pytest.mark.parametrize("where", ["tokenizer_config.json", "chat_template.jinja"])
def test_hf_folder_chat_template_gives_the_same_ids_as_transformers(tmp_path, where):
    import torch

    from ragctx.generator import Generator

    torch.manual_seed(0)
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|im_start|>": 3, "<|im_end|>": 4,
             **{w: i + 5 for i, w in enumerate("system user assistant You are helpful . What is the capital of "
                                               "France ? Be brief Hi".split())}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<s>", "</s>"])
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=128, bos_token_id=1, eos_token_id=4))
    folder = tmp_path / "chat"
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "<|im_end|>", "add_bos_token": False}
    if where == "chat_template.jinja":
        (folder / "chat_template.jinja").write_text(CHATML)
    else:
        config["chat_template"] = CHATML
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    gen = Generator.from_pretrained(folder, device="cpu")
    for chat in (CHATS[0], [{"role": "system", "content": "Be brief ."}, {"role": "user", "content": "Hi"}]):
        expected = ref.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert gen.chat_prompt(chat) == list(expected)
    assert gen.tokenizer.eos_ids == {4}
    assert gen.chat(CHATS[0], max_new_tokens=3).prompt_tokens == len(gen.chat_prompt(CHATS[0]))


def test_a_generator_without_a_chat_template_says_so():
    import torch

    from ragctx.generator import ByteTokenizer, Generator, ModelConfig, Transformer

    torch.manual_seed(0)
    gen = Generator(Transformer(ModelConfig.from_name("tiny")), ByteTokenizer())
    with pytest.raises(RagctxError, match="no chat template"):
        gen.chat(CHATS[0])
