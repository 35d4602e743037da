"""The two CPU speed-ups of the SFT entrypoint change no number: packed rows and completion-only scoring.

A 2-layer random Llama (no download, well under a second) is enough: both claims are about masks and
positions, not about what the model knows.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tasks.train.common import completion_positions_only_on_cpu
from tasks.train.sft import PackedRowsCollator, counting_packed_tokens

PAD = 0


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model():
    return _tiny_llama()


def _example(seed: int, prompt: int, completion: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (prompt + completion,), generator=generator).tolist()
    return {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]}


EXAMPLES = [_example(1, 5, 7), _example(2, 3, 4), _example(3, 6, 9)]


def _summed_nll(model, batch: dict) -> torch.Tensor:
    labels = batch.pop("labels")
    # use_cache=False as in training (trl sets it): with a cache, transformers does not look for packed rows.
    logits = model(**batch, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )


def _alone(model, example: dict) -> torch.Tensor:
    return _summed_nll(
        model,
        {"input_ids": torch.tensor([example["input_ids"]]), "labels": torch.tensor([example["labels"]])},
    )


def _packed(first: dict, second: dict) -> dict:
    return {
        "input_ids": first["input_ids"] + second["input_ids"],
        "labels": first["labels"] + second["labels"],
        "seq_lengths": [len(first["input_ids"]), len(second["input_ids"])],
    }


def test_packed_rows_give_each_example_exactly_its_own_loss(model):
    rows = [
        _packed(EXAMPLES[0], EXAMPLES[1]),
        {**EXAMPLES[2], "seq_lengths": [len(EXAMPLES[2]["input_ids"])]},
    ]
    batch = PackedRowsCollator(PAD)(rows)

    assert batch["input_ids"].shape == (2, 19) and "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [list(range(12)) + list(range(7)), list(range(15)) + [0] * 4]
    with torch.no_grad():
        packed = _summed_nll(model, dict(batch))
        separate = sum(_alone(model, example) for example in EXAMPLES)
    assert packed.item() == pytest.approx(separate.item(), rel=1e-5)


def test_positions_restart_per_example_and_padding_is_never_a_target(model):
    rows = [_packed(EXAMPLES[1], EXAMPLES[1]), {**EXAMPLES[1], "seq_lengths": [7]}]
    batch = PackedRowsCollator(PAD)(rows)

    assert batch["position_ids"].tolist() == [list(range(7)) * 2, list(range(7)) + [0] * 7]
    assert batch["input_ids"][1, 7:].tolist() == [PAD] * 7
    assert (batch["labels"][1, 7:] == -100).all()
    assert batch["labels"][0, 7] == -100  # first token of the second example: no cross-example target


def test_without_the_position_ids_examples_would_see_each_other(model):
    """The control: the same row as one plain sequence gives another loss, so the test above can fail."""
    batch = PackedRowsCollator(PAD)([_packed(EXAMPLES[0], EXAMPLES[2])])
    plain = {"input_ids": batch["input_ids"], "labels": batch["labels"].clone()}
    with torch.no_grad():
        packed, leaky = _summed_nll(model, dict(batch)), _summed_nll(model, plain)
        separate = _alone(model, EXAMPLES[0]) + _alone(model, EXAMPLES[2])
    assert packed.item() == pytest.approx(separate.item(), rel=1e-5)
    assert abs(leaky.item() - separate.item()) > 1e-3


def test_completion_only_scoring_keeps_loss_and_gradients_and_is_undone():
    import trl.trainer.utils as trl_utils
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    original = trl_utils._use_triton
    peft_model = get_peft_model(
        _tiny_llama(),
        LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            init_lora_weights=False,
            target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    add_fused_lm_head(peft_model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    batch = {
        "input_ids": torch.tensor([EXAMPLES[0]["input_ids"]]),
        "labels": torch.tensor([EXAMPLES[0]["labels"]]),
    }

    def loss_and_grads():
        peft_model.zero_grad()
        out = peft_model(**batch, fused_lm_head=True)
        out.loss.backward()
        return out.loss.item(), [p.grad.clone() for p in peft_model.parameters() if p.requires_grad]

    every_position = loss_and_grads()
    with completion_positions_only_on_cpu():
        assert trl_utils._use_triton(torch.device("cpu")) is True
        labelled_only = loss_and_grads()
    assert trl_utils._use_triton is original
    assert labelled_only[0] == pytest.approx(every_position[0], rel=1e-6)
    for a, b in zip(labelled_only[1], every_position[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


class _CountingBase:
    """What ``counting_packed_tokens`` reads of a Trainer; its own count stands for the Trainer's."""

    def __init__(self):
        from types import SimpleNamespace

        self.args = SimpleNamespace(include_num_input_tokens_seen="non_padding", device="cpu")
        self.state = SimpleNamespace(num_input_tokens_seen=0)
        self.accelerator = SimpleNamespace(gather=lambda tensor: tensor)
        self.counted_by_base = 0

    def _track_num_input_tokens(self, inputs):
        self.counted_by_base += 1


def test_a_packed_batch_counts_every_token_even_those_equal_to_the_pad_id():
    import transformers

    assert hasattr(transformers.Trainer, "_track_num_input_tokens")  # the hook overridden; renamed would fail here
    with_pad_ids = [{"input_ids": [PAD, 5, PAD, 7, 8, PAD], "labels": [-100, -100, PAD, 7, 8, PAD]}, EXAMPLES[1]]
    rows = [_packed(*with_pad_ids), {**EXAMPLES[2], "seq_lengths": [15]}]
    batch = PackedRowsCollator(PAD)(rows)  # 13 + 15 tokens, padded to 15 wide
    trainer = counting_packed_tokens(_CountingBase)()

    trainer._track_num_input_tokens(batch)
    assert trainer.state.num_input_tokens_seen == 13 + 15  # comparing with the pad id would give 13 + 15 - 3
    # trl's padding-free row (FlashAttention): the examples flattened into one row, no padding.
    flat = torch.cat([torch.arange(n) for n in (6, 7, 15)]).unsqueeze(0)
    trainer._track_num_input_tokens({"input_ids": torch.zeros_like(flat), "position_ids": flat})
    assert trainer.state.num_input_tokens_seen == 28 + 28 and trainer.counted_by_base == 0
    trainer._track_num_input_tokens({"input_ids": batch["input_ids"], "attention_mask": batch["input_ids"] > 0})
    assert trainer.counted_by_base == 1  # a padded batch with its mask: the Trainer's own count
