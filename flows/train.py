"""Train stage: LoRA SFT on the training split, then DPO on the pairs (as the recipe's method says)."""

from prefect import flow

from tasks.core.recipe import Recipe
from tasks.core.refs import StageOutput
from tasks.core.stage import StageResult, combine, run_task
from tasks.train.tasks import train_adapter


@flow(name="train")
def train_flow(recipe: Recipe, base: StageOutput, dataset: StageOutput, pairs: StageOutput | None) -> StageResult:
    outputs, statuses, adapter = {}, [], None
    if "sft" in recipe.train.method:
        sft, status = run_task(train_adapter, method="sft", base_model=base["model"], data=dataset["train"],
                               train=recipe.train, eval_data=dataset["heldout"])
        outputs["sft"], adapter = sft, sft["adapter"]
        statuses.append(status)
    if "dpo" in recipe.train.method and (pairs is None or not pairs["pairs"].rows):
        if adapter is None:
            raise ValueError("train.method is dpo but the pairs stage produced no pairs")
        outputs["dpo"] = StageOutput(counts={"dpo_skipped": "the pairs stage produced no pairs"})
    elif "dpo" in recipe.train.method:
        dpo, status = run_task(train_adapter, method="dpo", base_model=base["model"], data=pairs["pairs"],
                               train=recipe.train, init_adapter=adapter)
        outputs["dpo"], adapter = dpo, dpo["adapter"]
        statuses.append(status)
    outputs["final"] = StageOutput(artifacts={"adapter": adapter})
    return StageResult(status=combine(statuses), outputs=outputs)
