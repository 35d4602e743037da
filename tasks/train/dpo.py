"""LoRA DPO entrypoint: ``python -m tasks.train.dpo --config c.json --model-dir base --data pairs.jsonl``.

Continues the SFT adapter (``--init-adapter``) on preference pairs (trl's conversational
prompt/chosen/rejected format). The reference policy is the SFT model itself, kept frozen as a
merged copy, so DPO measures its shift from where SFT left off. Same script locally and on SageMaker.
"""

from __future__ import annotations

import sys

from tasks.train import common


def main(argv: list[str] | None = None) -> int:
    # --- setup
    args, train, run_key = common.start("dpo", argv)
    opt = train["dpo"]

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in common.jsonl_rows(args.data)]
    if not rows:
        raise SystemExit("no preference pairs: nothing to train on")
    common.seed_everything(train)
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
    dpo_args = DPOConfig(beta=opt["beta"], **common.trainer_arguments(args, train, opt))
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=dpo_args, train_dataset=train_ds,
                         processing_class=tokenizer, peft_config=peft_config,
                         callbacks=[common.completion_callback(run_key)])
    # --- train
    with common.completion_positions_only_on_cpu():
        run = common.timed_training(trainer, resume)
    # --- save
    common.publish(args.output_dir, trainer, {"method": "dpo", "run_key": run_key, **run, "pairs": len(rows)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
