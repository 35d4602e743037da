"""LoRA DPO entrypoint: ``python -m tasks.train.dpo --config c.json --model-dir base --data pairs.jsonl``.

Continues the SFT adapter (``--init-adapter``) on preference pairs (trl's conversational
prompt/chosen/rejected format). The reference policy is the SFT model itself, kept frozen as a
merged copy, so DPO measures its shift from where SFT left off. Same script locally and on SageMaker.
"""

from __future__ import annotations

import sys
import time

from tasks.train import common


def main(argv: list[str] | None = None) -> int:
    # --- setup
    args = common.parse_args("dpo", argv)
    config = common.load_config(args.config)
    train, run_key = config["train"], config["run_key"]
    opt = train["dpo"]
    common.check_lora(train)
    common.check_quantization(train)

    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in common.jsonl_rows(args.data)]
    if not rows:
        raise SystemExit("no preference pairs: nothing to train on")
    set_seed(train["seed"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    model, tokenizer = common.load_base(args.model_dir, train)
    peft_config = common.lora_config(train)
    ref_model = None
    if args.init_adapter:
        from peft import PeftModel

        reference, _ = common.load_base(args.model_dir, train)
        ref_model = PeftModel.from_pretrained(reference, args.init_adapter).merge_and_unload()
        ref_model.eval()
        model = PeftModel.from_pretrained(model, args.init_adapter, is_trainable=True)
        peft_config = None
    train_ds = Dataset.from_list(rows)
    resume = common.prepare_checkpoints(args.checkpoint_dir, run_key)
    dpo_args = DPOConfig(
        output_dir=str(args.checkpoint_dir), seed=train["seed"], data_seed=train["seed"], beta=opt["beta"],
        learning_rate=opt["learning_rate"], lr_scheduler_type=opt["scheduler"],
        warmup_steps=common.warmup_steps(opt),
        num_train_epochs=opt["epochs"], max_steps=opt["max_steps"],
        per_device_train_batch_size=opt["batch_size"],
        gradient_accumulation_steps=opt["gradient_accumulation"], max_length=opt["max_seq_len"],
        save_strategy="steps", save_steps=train["save_steps"], save_total_limit=2, logging_steps=1,
        report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        activation_checkpointing=train.get("gradient_checkpointing", False), **common.precision_kwargs(train),
    )
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=dpo_args, train_dataset=train_ds,
                         processing_class=tokenizer, peft_config=peft_config,
                         callbacks=[common.completion_callback(run_key)])
    # --- train
    with common.completion_positions_only_on_cpu():
        start, cpu_start = time.perf_counter(), time.process_time()
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # --- save
    args.output_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(args.output_dir, safe_serialization=True)
    common.write_metrics(args.output_dir, trainer, {
        "method": "dpo", "run_key": run_key, "train_runtime_s": elapsed, "train_cpu_s": cpu,
        "global_step": trainer.state.global_step,
        "resumed_from": resume.name if resume else None, "train_loss": result.training_loss,
        "pairs": len(rows),
        "tokens_seen": int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)})
    common.clean_output(args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
