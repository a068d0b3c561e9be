"""Turn a Method into a configured model: LoRA/VeLoRA via peft, (selective) checkpointing, WTA-CRS,
MEFT (reversible adapters, wtacrs/meft.py), activation offloading (wtacrs/offload.py)."""

from __future__ import annotations

import warnings

import wtacrs
from contract.methods import Method
from wtacrs.families import family as family_record

_PEFT_TASK = {"classification": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM", "causal_lm": "CAUSAL_LM"}
_SAMPLER_METHOD = {"wtacrs": "wta", "crs": "crs", "topk": "topk"}


def apply_method(model, family: str, method: Method, lora_r: int = 8, **wtacrs_options):
    """The method applied in place (peft wraps, so use the return value); wtacrs_options go to WTACRSConfig."""
    if method.meft:
        from wtacrs.meft import MEFTConfig, apply_meft

        options = {"r": method.meft_r, "lam": method.meft_lambda, "beta": method.meft_beta}
        return apply_meft(model, MEFTConfig(variant=method.meft, **{k: v for k, v in options.items() if v is not None}))
    if method.checkpointing or method.selective_checkpointing:
        kwargs = {"use_reentrant": False}
        if method.selective_checkpointing:
            from wtacrs.offload import selective_checkpoint_context

            kwargs["context_fn"] = selective_checkpoint_context
        if hasattr(model, "activation_checkpointing_enable"):  # newer transformers 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if method.adapter:
        import peft

        extra = {"velora_config": peft.VeloraConfig()} if method.adapter == "velora" else {}
        config = peft.LoraConfig(
            r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, task_type=_PEFT_TASK[family_record(family).task], **extra
        )
        with warnings.catch_warnings():  # peft asks transformers' deprecated is_gradient_checkpointing
            warnings.simplefilter("ignore", FutureWarning)
            model = peft.get_peft_model(model, config)
    if method.sampler:
        config = wtacrs.WTACRSConfig(ratio=method.ratio, method=_SAMPLER_METHOD[method.sampler], **wtacrs_options)
        wtacrs.apply_wtacrs(model, config)
    if method.offload:
        from wtacrs.offload import apply_offload

        apply_offload(model)  # last: its saved-tensor hooks wrap the whole forward
    return model
