"""LoRA SFT entrypoint: ``python -m tasks.train.sft --config c.json --model-dir base --data train.jsonl``.

The same script runs as a local subprocess and as a SageMaker training job (setup, train, save).
Data rows are SyntheticExample JSONL (``messages``); the last assistant turn is the completion, and
only it is trained on (trl's prompt-completion format). With ``train.sft.packing`` examples are
packed best-fit into ``max_seq_len`` rows without padding; attention stays within each example
(position ids restart per example, and transformers builds a block-diagonal mask from them).
Writes the adapter and ``metrics.json`` (the Trainer's log history, final train and eval loss,
tokens seen) to the output folder.
"""

from __future__ import annotations

import sys

from tasks.train import common


def to_prompt_completion(rows: list[dict]) -> list[dict]:
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]


class PackedRowsCollator:
    """Packed examples as one batch row per packed row, for attention without FlashAttention.

    trl collates a packed batch into a single flattened row ("padding-free"), which FlashAttention's
    variable-length kernels handle in time linear in the number of examples. With sdpa or eager
    attention (CPU, or a GPU without flash-attn) the block-diagonal mask over that one long row costs
    (batch x max_len)^2 per layer instead of batch x max_len^2: at batch 4 x 512 on CPU, about as
    much as the rest of the model. Here every packed row stays a row, padded to the longest one.
    Position ids restart at each example and are 0 on padding, and there is no attention mask, so
    transformers builds the block-diagonal mask from the position ids: an example never sees
    another example or padding. The first token of each example gets no label (its prediction would
    come from the previous example), as in trl's own collator.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        position_ids = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example["input_ids"])
            input_ids[row, :length] = torch.as_tensor(example["input_ids"])
            labels[row, :length] = torch.as_tensor(example.get("labels", example["input_ids"]))
            lengths = example.get("seq_lengths") or [length]
            position_ids[row, :length] = torch.cat([torch.arange(n) for n in lengths])
        labels[position_ids == 0] = -100
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def counting_packed_tokens(trainer_class: type) -> type:
    """``trainer_class`` with an exact ``num_input_tokens_seen`` for packed batches.

    A packed batch has no attention mask (the block-diagonal mask comes from the position ids), so the
    Trainer counts the tokens that differ from the pad id, and a tokenizer that pads with a token its
    chat template uses (SmolLM2's ``<|im_end|>``, Llama's end of turn) loses every turn end from the
    count: ``tokens_seen`` and every throughput made from it came out ~1% low. Here a packed row's
    tokens are counted up to its last position id above 0 (the padding after it has position 0); the
    flattened padding-free row of trl's FlashAttention path is counted by the same rule. It overrides
    the Trainer's private ``_track_num_input_tokens`` (transformers is pinned; a unit test fails if the
    hook is renamed).
    """

    class Trainer(trainer_class):
        def _track_num_input_tokens(self, inputs):
            position_ids = inputs.get("position_ids")
            if (self.args.include_num_input_tokens_seen != "non_padding" or "attention_mask" in inputs
                    or position_ids is None):
                return super()._track_num_input_tokens(inputs)
            import torch

            columns = torch.arange(position_ids.shape[-1], device=position_ids.device)
            last = torch.where(position_ids > 0, columns, -1).max(dim=-1).values
            tokens = (last + 1).sum().to(device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += self.accelerator.gather(tokens).sum().item()

    Trainer.__name__ = Trainer.__qualname__ = trainer_class.__name__
    return Trainer


def _flash_attention(model) -> bool:
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return "flash" in implementation


def main(argv: list[str] | None = None) -> int:
    # --- setup
    args, train, run_key = common.start("sft", argv)
    opt = train["sft"]

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    train_ds = Dataset.from_list(to_prompt_completion(common.jsonl_rows(args.data)))
    eval_ds = None
    if args.eval_data:
        eval_ds = Dataset.from_list(to_prompt_completion(common.jsonl_rows(args.eval_data)))
    if len(train_ds) == 0:
        raise SystemExit("the training set is empty: nothing to train on")
    common.seed_everything(train)
    model, tokenizer = common.load_base(args.model_dir, train)
    peft_config = common.lora_config(train)
    if args.init_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.init_adapter, is_trainable=True)
        peft_config = None
    resume = common.prepare_checkpoints(args.checkpoint_dir, run_key)
    sft_args = SFTConfig(
        packing=opt["packing"], completion_only_loss=True, disable_tqdm=False,
        per_device_eval_batch_size=opt["batch_size"], eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=train.get("eval_steps") or train["save_steps"], **common.trainer_arguments(args, train, opt))
    trainer = counting_packed_tokens(SFTTrainer)(
        model=model, args=sft_args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        peft_config=peft_config, callbacks=[common.completion_callback(run_key)])
    if opt["packing"] and not _flash_attention(trainer.model):
        # trl refuses a custom collator with packing, so it is swapped in after construction.
        trainer.data_collator = PackedRowsCollator(tokenizer.pad_token_id)
    # --- train
    with common.completion_positions_only_on_cpu():
        run = common.timed_training(trainer, resume)
        eval_loss = None
        if eval_ds is not None:
            last = [e for e in trainer.state.log_history if "eval_loss" in e]
            if last and last[-1].get("step") == trainer.state.global_step:
                eval_loss = last[-1]["eval_loss"]
            else:  # the last step was not an eval step: measure where training ended
                eval_loss = trainer.evaluate()["eval_loss"]
    # --- save
    common.publish(args.output_dir, trainer, {"method": "sft", "run_key": run_key, **run, "eval_loss": eval_loss,
                                              "examples": len(train_ds), "packing": opt["packing"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
