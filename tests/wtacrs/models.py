"""Tiny random-weight models of each supported family, for tests."""

import torch
import transformers

TINY = {
    "bert": lambda: transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=2,
        )
    ),
    "roberta": lambda: transformers.RobertaForSequenceClassification(
        transformers.RobertaConfig(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=80,
            num_labels=2,
        )
    ),
    "t5": lambda: transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0
        )
    ),
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    ),
    "opt": lambda: transformers.OPTForCausalLM(
        transformers.OPTConfig(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
        )
    ),
    "llama": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ),
}


def tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return TINY[family]().train()


def inputs(family: str, batch: int = 3, seq: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq - 4 :] = 0  # some padding, so masks are exercised
    if family in ("bert", "roberta"):
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (batch,), generator=g)}
    if family == "t5":
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.randint(3, 128, (batch, seq // 2), generator=g),
        }
    return {"input_ids": ids, "attention_mask": mask, "labels": ids}
