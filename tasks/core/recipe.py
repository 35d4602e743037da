"""Recipes: one YAML file per kind of job, validated by one pydantic schema.

A recipe says what data to collect, how to synthesize and curate it, how to train, package and
validate the student, and what the gate demands. Field descriptions are the help text
(``python -m flows.full --help``). ``--set a.b=value`` overrides any field; the value is read as YAML,
so ``--set train.sft.max_steps=4`` gives an int and ``--set pairs.enabled=false`` a bool.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.core.models import BUILTIN_GGUF

RECIPES_DIR = Path(__file__).resolve().parents[2] / "deployments" / "recipes"
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample"


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # How a stage is run, watched or paced, not what it produces: left out of cache keys and run keys,
    # so changing one neither redoes finished work nor starts a running job over.
    operational: ClassVar[frozenset[str]] = frozenset()

    def identity_exclude(self) -> dict[str, Any]:
        """Pydantic ``exclude`` for the operational fields of this section and of its nested sections."""
        exclude: dict[str, Any] = dict.fromkeys(self.operational, True)
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name not in exclude and isinstance(value, Section) and (nested := value.identity_exclude()):
                exclude[name] = nested
        return exclude

    def identity(self) -> dict[str, Any]:
        """The settings that decide what a stage produces: the section as JSON minus its operational fields."""
        return self.model_dump(mode="json", by_alias=True, exclude=self.identity_exclude() or None)


class _Options(BaseModel):
    """The ``options`` a collector reads. Only checked here: each collector applies its own defaults,
    so every field is optional and ``None`` means "the collector's default" (README, Sources)."""

    model_config = ConfigDict(extra="forbid")


class _RetryOptions(_Options):
    retry_attempts: int | None = Field(default=None, ge=1)
    retry_base_delay_s: float | None = Field(default=None, ge=0)
    retry_max_delay_s: float | None = Field(default=None, ge=0)
    max_retry_after_s: float | None = Field(default=None, ge=0)
    timeout_s: float | None = Field(default=None, gt=0)


class _StackExchangeDumpOptions(_Options):
    site: str | None = None


class _StackExchangeApiOptions(_RetryOptions):
    site: str | None = None
    base_url: str | None = None
    key_env: str | None = None
    page_size: int | None = Field(default=None, ge=1, le=100)
    tagged: str | None = None
    max_pages: int | None = Field(default=None, ge=1)
    min_quota: int | None = Field(default=None, ge=0)


class _PdfOptions(_Options):
    workers: int | None = Field(default=None, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    memory_mb: int | None = Field(default=None, ge=64)


class _ArxivPdfsOptions(_PdfOptions):
    source_name: str | None = None


class _ArxivQueryOptions(_RetryOptions, _PdfOptions):
    base_url: str | None = None
    pdf_base_url: str | None = None
    download_pdfs: bool | None = None
    page_size: int | None = Field(default=None, ge=1)
    delay_seconds: float | None = Field(default=None, ge=0)
    num_retries: int | None = Field(default=None, ge=0)
    sort_by: Literal["relevance", "lastUpdatedDate", "submittedDate"] | None = None
    sort_order: Literal["ascending", "descending"] | None = None
    max_results: int | None = Field(default=None, ge=1)
    max_pdf_mb: float | None = Field(default=None, gt=0)


class _OpenReviewOptions(_Options):
    api_version: Literal["v1", "v2"] | None = None
    base_url: str | None = None
    submission_invitation: str | None = None
    page_size: int | None = Field(default=None, ge=1)
    forum_ids: list[str] | None = None
    retry_attempts: int | None = Field(default=None, ge=1)
    retry_base_delay_s: float | None = Field(default=None, ge=0)


class _PostgresOptions(_Options):
    scored_by: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    scores_table: str | None = None
    profiles_table: str | None = None
    columns: dict[str, str | None] | None = None
    secret_block: str | None = None
    batch_size: int | None = Field(default=None, ge=1)
    connect_timeout_s: int | None = Field(default=None, ge=1)


SOURCE_OPTIONS: dict[str, type[_Options]] = {
    "stackexchange_dump": _StackExchangeDumpOptions,
    "stackexchange_api": _StackExchangeApiOptions,
    "arxiv_pdfs": _ArxivPdfsOptions,
    "arxiv_query": _ArxivQueryOptions,
    "openreview": _OpenReviewOptions,
    "openreview_files": _Options,
    "peerread": _Options,
    "postgres": _PostgresOptions,
    "instructions": _Options,
}


def check_source_options(kind: str, options: dict[str, Any]) -> None:
    """Raise ValueError naming every unknown or badly typed option of a ``kind`` source."""
    model = SOURCE_OPTIONS[kind]
    known = sorted(field.alias or name for name, field in model.model_fields.items())
    problems = []
    for key in sorted(set(options) - set(known)):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"unknown option {key!r}{hint}")
    if not problems:
        try:
            model.model_validate(options)
        except ValidationError as exc:
            problems = [f"option {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
    if problems:
        allowed = ", ".join(known) if known else "none"
        raise ValueError(f"{kind} source: {'; '.join(problems)} (options of {kind}: {allowed})")


class SourceConfig(Section):
    """One input of the collect stage."""

    kind: Literal["stackexchange_dump", "stackexchange_api", "arxiv_pdfs", "arxiv_query", "openreview",
                  "openreview_files", "peerread", "postgres", "instructions"] = Field(
        description="Which collector reads this source.")
    path: str | None = Field(default=None, description="Local file or folder (relative paths: to the repo root).")
    query: str | None = Field(default=None, description="Search query, venue id or site name, by kind.")
    ids: list[str] = Field(default_factory=list, description="Explicit ids (arXiv ids, forum ids...).")
    limit: int | None = Field(default=None, ge=1, description="At most this many items from this source.")
    options: dict[str, Any] = Field(default_factory=dict, description="Collector-specific options, checked against the kind's (README: Sources).")

    def resolved_path(self) -> Path | None:
        if self.path is None:
            return None
        path = Path(self.path)
        return path if path.is_absolute() else (RECIPES_DIR.parents[1] / path).resolve()

    @model_validator(mode="after")
    def _known_options(self) -> SourceConfig:
        check_source_options(self.kind, self.options)
        return self


class CollectConfig(Section):
    sources: list[SourceConfig] = Field(default_factory=list, description="Where the raw data comes from.")


class TeacherConfig(Section):
    """The model that writes the synthetic data, critiques and judges."""

    operational = frozenset({"api_key_env", "concurrency", "requests_per_minute", "tokens_per_minute",
                             "request_timeout_s", "max_retries", "retry_backoff_s", "max_wait_s",
                             "limiter_burst_s", "shards", "dask_address"})

    provider: Literal["llama_cpp", "openai"] = Field(
        default="llama_cpp",
        description="llama_cpp: a local GGUF in-process (no key). openai: any OpenAI-compatible endpoint.")
    model: str = Field(default="smollm2-135m",
                       description="Model name (openai) or a GGUF path / built-in name (llama_cpp): "
                                   + ", ".join(BUILTIN_GGUF) + ".")
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL (openai provider).")
    api_key_env: str = Field(default="OPENAI_API_KEY",
                             description="Environment variable (or Prefect Secret block) holding the key.")
    temperature: float = Field(default=0.2, ge=0, le=2)
    max_tokens: int = Field(default=256, ge=1)
    n_ctx: int = Field(default=2048, ge=256, description="Context window of a local teacher.")
    max_repairs: int = Field(default=1, ge=0, description="Re-asks after an output fails its schema.")
    concurrency: int = Field(default=4, ge=1, description="Requests in flight at once (openai).")
    requests_per_minute: float | None = Field(default=None, gt=0, description="Client-side rate limit.")
    tokens_per_minute: float | None = Field(default=None, gt=0, description="Client-side token limit.")
    max_total_tokens: int | None = Field(default=None, gt=0, description="Per-run token budget.")
    seed: int = 0
    request_timeout_s: float = Field(default=120.0, gt=0, description="Per-request timeout (openai); a hung request is retried after it.")
    max_retries: int = Field(default=6, ge=0, description="Retries on 429/5xx/timeouts/malformed responses: a request costs at most 1 + max_retries calls.")
    retry_backoff_s: float = Field(default=0.5, gt=0, description="First backoff ceiling without Retry-After; doubles per retry (equal jitter, capped at 30 s).")
    max_wait_s: float = Field(default=60.0, ge=0, description="Longest Retry-After obeyed; a longer one defers the stage (RateLimitDeferred).")
    limiter_burst_s: float = Field(default=1.0, gt=0, description="Seconds' worth of requests/tokens per minute that may go out at once.")
    price_per_1k_prompt_tokens: float | None = Field(default=None, ge=0, description="Price per 1,000 prompt tokens; with it, cost is counted.")
    price_per_1k_completion_tokens: float | None = Field(default=None, ge=0, description="Price per 1,000 completion tokens.")
    price_per_1k_cached_prompt_tokens: float | None = Field(
        default=None, ge=0, description="Price per 1,000 prompt tokens the provider served from its prompt cache "
                                        "(usage.prompt_tokens_details.cached_tokens); unset: the prompt price.")
    max_cost: float | None = Field(default=None, gt=0, description="Per-run cost cap, in the prices' currency (needs prices).")
    shards: int = Field(default=1, ge=1, description="Split the synthesize stage's generation into this many shards, "
                        "each run by a Dask worker process with 1/shards of the rate limits and budget.")
    dask_address: str | None = Field(default=None, description="Scheduler of a running Dask cluster for the shards "
                                     "(tcp://host:8786); none: a local cluster of `shards` worker processes.")
    structured_mode: Literal["json_schema", "json_object", "prompt"] = Field(
        default="json_schema",
        description="How a JSON schema is requested: response_format json_schema (OpenAI, Gemini, Groq, OpenRouter, vLLM, "
                    "Ollama, llama.cpp server), JSON mode with the schema in the prompt, or prompt only.")

    @model_validator(mode="after")
    def _cost_cap_needs_prices(self) -> TeacherConfig:
        if self.max_cost is not None and self.price_per_1k_prompt_tokens is None and self.price_per_1k_completion_tokens is None:
            raise ValueError("teacher.max_cost needs teacher.price_per_1k_prompt_tokens or price_per_1k_completion_tokens")
        return self


class SynthesizeConfig(Section):
    generator: Literal["grounded_qa", "personas", "review", "profile_labels", "instructions", "passthrough"] = Field(
        default="grounded_qa",
        description="What the teacher writes for each collected item: grounded_qa (Q&A citing a paper section), "
                    "personas (one explanation per persona of each passage), review (a structured review with BM25 "
                    "few-shot), profile_labels (the API model's stored scores as JSON), instructions (a response "
                    "to each seed instruction).")
    max_items: int = Field(default=8, ge=0, description="Items sent to the teacher per run.")
    include_human: bool = Field(default=True, description="Also keep human-written examples (Q&A, reviews).")
    max_human: int | None = Field(default=None, ge=0, description="At most this many human examples.")
    system_prompt: str = Field(default="You are a careful statistics expert. Answer clearly and concisely.",
                               description="System message of the student's training examples.")
    personas: list[str] = Field(default_factory=lambda: ["eli5", "intuitive", "executive"],
                                description="Personas the personas generator writes for (eli5, intuitive, executive).")
    retrieved_examples: int = Field(default=2, ge=0, description="Similar human examples put in the prompt (BM25).")
    source_chars: int = Field(default=1500, ge=200, description="Characters of source text given to the teacher.")
    max_rating_gap: float | None = Field(
        default=None, ge=0,
        description="review: reject a teacher review whose rating is further than this from the paper's mean "
                    "human rating (the training papers' labels are known; None keeps every rating).")


class CurateConfig(Section):
    max_tokens: int = Field(default=2048, ge=32, description="Token limit per example (student tokenizer + template).")
    overflow: Literal["trim", "drop"] = Field(default="trim", description="What to do with a longer example.")
    heldout_fraction: float = Field(default=0.15, gt=0, lt=1, description="Share of ids in the frozen held-out set.")
    near_duplicate_threshold: float = Field(default=0.8, gt=0, le=1, description="MinHash Jaccard above which two are near-copies.")
    min_chars: int = Field(default=20, ge=0, description="Shorter assistant turns are dropped as degenerate.")
    split_salt: str = Field(default="distillery-v1", description="Changing it reshuffles every split.")


# What the critic checks an answer against and the improver rewrites it to follow, unless a recipe
# names its own (stats-qa does): general principles of a good answer to an instruction.
DEFAULT_CONSTITUTION = (
    "Follow the instruction exactly: do the task it asks, in the form and length it asks for.",
    "Be correct: no factual, logical or mathematical errors, and nothing invented.",
    "Be complete: answer every part of the instruction.",
    "Be clear and concise: no filler, no repetition.",
)


class PairsConfig(Section):
    enabled: bool = Field(default=True, description="Build preference pairs and train DPO on them.")
    max_prompts: int = Field(default=6, ge=0, description="Prompts that go through respond→critique→improve.")
    student_temperature: float = Field(default=0.7, ge=0, le=2)
    critique_temperature: float = Field(default=0.3, ge=0, le=2)
    max_tokens: int = Field(default=160, ge=8, description="Tokens of the student's response (the critique and "
                            "the improvement are sized to their schemas' longest JSON).")
    pass_grade: float = Field(default=0.5, ge=0, le=1,
                              description="An answer succeeds when the teacher's probability that it is a good "
                              "answer (validation's grade) is at least this.")
    constitution: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CONSTITUTION), min_length=1,
        description="Principles the critic checks each answer against and the improver rewrites it to follow.")
    on_policy: bool = Field(default=False, description="Take the rejected side from the production model.")


class LoraConfig(Section):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class OptimConfig(Section):
    learning_rate: float = Field(default=2e-4, gt=0)
    scheduler: str = Field(default="cosine", description="transformers scheduler name.")
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, description="Stop after this many steps (-1: run the epochs).")
    batch_size: int = Field(default=4, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    max_seq_len: int = Field(default=512, ge=16)
    packing: bool = False
    beta: float = Field(default=0.1, gt=0, description="DPO beta (DPO only).")


class SageMakerConfig(Section):
    """Where and how a SageMaker training job runs (train.backend=sagemaker)."""

    operational = frozenset({"poll_s", "endpoint_url", "spot", "max_runtime_s", "max_wait_s"})

    image_uri: str | None = Field(default=None, description="Training image with this repo's requirements (infra/sagemaker).")
    role_arn: str | None = Field(default=None, description="SageMaker execution role (infra/cloudformation output).")
    instance_type: str = Field(default="ml.g5.xlarge")
    volume_gb: int = Field(default=50, ge=1)
    spot: bool = Field(default=True, description="Managed spot training (resumes from checkpoints).")
    max_runtime_s: int = Field(default=6 * 3600, ge=60)
    max_wait_s: int = Field(default=12 * 3600, ge=60, description="Spot: total time including waiting for capacity.")
    poll_s: float = Field(default=30, gt=0, description="Seconds between status polls.")
    region: str | None = Field(default=None, description="AWS region (default: the environment's).")
    endpoint_url: str | None = Field(default=None, description="SageMaker API endpoint override (tests).")


class TrainConfig(Section):
    operational = frozenset({"save_steps"})

    base_model: str = Field(default="smollm2-135m",
                            description=f"Built-in name ({', '.join(BUILTIN_GGUF)}), a local HF folder or a GGUF file.")
    method: Literal["sft", "dpo", "sft+dpo"] = Field(default="sft+dpo")
    backend: Literal["local", "sagemaker"] = Field(default="local")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    sft: OptimConfig = Field(default_factory=OptimConfig)
    dpo: OptimConfig = Field(default_factory=lambda: OptimConfig(learning_rate=5e-5, max_steps=4, batch_size=2))
    seed: int = 42
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    quantization: Literal["none", "4bit"] = Field(default="none", description="4bit: QLoRA (needs CUDA).")
    continue_from_previous: bool = Field(default=False, description="Start from last published adapter.")
    save_steps: int = Field(default=50, ge=1, description="Checkpoint every N steps.")
    eval_steps: int | None = Field(default=None, ge=1, description=(
        "SFT: measure the held-out loss every N steps (default: save_steps) and at the end. Decides the "
        "adapter: an evaluation draws from torch's generator, which moves the dropout of the steps after it."))
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for memory (large models).")
    trust_remote_code: bool = False
    sagemaker: SageMakerConfig = Field(default_factory=SageMakerConfig)


class PackageConfig(Section):
    quantizations: list[Literal["q4_k_m", "q8_0", "f16", "q4_0", "q5_k_m"]] = Field(default_factory=lambda: ["q4_k_m"])
    serve: Literal["q4_k_m", "q8_0", "f16", "q4_0", "q5_k_m"] = Field(default="q4_k_m", description="The type validated and deployed.")
    temperature: float = Field(default=0.2, ge=0, description="Modelfile PARAMETER temperature.")
    num_ctx: int = Field(default=2048, ge=128, description="Modelfile PARAMETER num_ctx.")
    num_predict: int = Field(default=512, ge=1, description="Modelfile PARAMETER num_predict: the longest answer served.")
    repeat_penalty: float = Field(
        default=1.0, gt=0,
        description="Modelfile PARAMETER repeat_penalty, and the penalty validation decodes with, so the gate "
                    "measures what is served (left out, Ollama would apply its own default, 1.1).")

    @model_validator(mode="after")
    def _serve_is_built(self) -> PackageConfig:
        if self.serve not in self.quantizations:
            raise ValueError(f"package.serve={self.serve!r} is not in package.quantizations={self.quantizations}")
        return self


class GateConfig(Section):
    """Thresholds of the deploy gate; a metric with no threshold is reported, not gated."""

    min: dict[str, float] = Field(default_factory=dict, description="metric -> lowest allowed value.")
    max: dict[str, float] = Field(default_factory=dict, description="metric -> highest allowed value.")
    beat_base: list[str] = Field(default_factory=list, description="Metrics the candidate must not lose on against the base.")
    no_regression: dict[str, float] = Field(default_factory=dict, description="metric -> tolerated loss against production.")


class ValidateConfig(Section):
    max_examples: int = Field(default=8, ge=1, description="Held-out examples run through each model.")
    max_tokens: int = Field(default=128, ge=8)
    metrics: list[str] = Field(default_factory=lambda: ["rouge_l", "latency_p50_s", "latency_p95_s"])
    gate: GateConfig = Field(default_factory=GateConfig)
    judge: bool = Field(default=False, description="Ask the teacher for a win rate (costs teacher calls).")
    judge_method: Literal["grade", "compare"] = Field(
        default="grade",
        description="How the judge reads a pair: grade (each answer graded alone, P(yes) to 'is this a good answer'; "
                    "no position bias, what small judges do best) or compare (both answers side by side, in both "
                    "orders). See tasks/validate/judge.py.")
    scorer: Literal["text", "rating", "persona", "profile"] = Field(
        default="text",
        description="Task metrics computed from the predictions on top of ROUGE-L, perplexity and latency: rating "
                    "(rating MAE, Pearson and Spearman vs the human rating), persona (the persona's format followed), "
                    "profile (agreement score 1-|predicted-label| and correlation with the API labels).")


class DeployConfig(Section):
    model_name: str = Field(default="distillery-student", description="Ollama model name; tags are run ids.")
    smoke_prompts: list[str] = Field(default_factory=lambda: ["What is a p-value?"])


class Recipe(BaseModel):
    """A whole job: every stage's settings."""

    name: str = Field(description="Recipe name; also the deployment and model family name.")
    description: str = ""
    output_format: Literal["text", "json"] = Field(default="text", description="json: outputs must follow a schema.")
    variants: list[str] = Field(
        default_factory=list,
        description="One model per variant: curate, pairs, train, package, validate and deploy run once per value of "
                    "the examples' metadata.variant (paper-explainer: the personas), each as recipe <name>-<variant> "
                    "with model <deploy.model_name>-<variant>. Empty: one model.")
    collect: CollectConfig = Field(default_factory=CollectConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    package: PackageConfig = Field(default_factory=PackageConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    deploy: DeployConfig = Field(default_factory=DeployConfig)

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _variants_are_produced(self) -> Recipe:
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants has duplicates: {self.variants}")
        if self.variants and self.synthesize.generator != "personas":
            raise ValueError("variants needs a generator that labels examples with a variant (synthesize.generator: personas)")
        missing = [v for v in self.variants if v not in self.synthesize.personas]
        if missing:
            raise ValueError(f"variants {missing} are not in synthesize.personas {self.synthesize.personas}")
        return self


class RecipeError(ValueError):
    """A recipe that cannot be loaded: unknown name, bad YAML, or a field that fails validation."""


DEFAULT_RECIPE = "stats-qa"


def recipe_profiles(name_or_path: str) -> list[str]:
    data = yaml.safe_load(_recipe_path(name_or_path).read_text()) or {}
    return list((data.get("profiles") or {}).keys())


def list_recipes() -> dict[str, str]:
    """Built-in recipe names and their one-line descriptions."""
    out = {}
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        out[path.stem] = str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""
    return out


def _recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} and path.exists():
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(list_recipes()) or "none"
        raise RecipeError(f"unknown recipe {name_or_path!r}; built-in recipes: {known}")
    return candidate


def set_field(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts; a numeric key indexes a list (``collect.sources.1.limit``)."""
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise RecipeError(f"empty field name in {dotted!r}")
    node: Any = data
    for key in keys[:-1]:
        if isinstance(node, list):
            node = _list_item(node, key, dotted)
            continue
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, (dict, list)):
            raise RecipeError(f"--set {dotted}: {key!r} is not a section")
        node = child
    if isinstance(node, list):
        index = int(keys[-1]) if keys[-1].isdigit() else None
        if index is None or index >= len(node):
            raise RecipeError(f"--set {dotted}: {keys[-1]!r} is not an index of that list")
        node[index] = value
    else:
        node[keys[-1]] = value


def _list_item(node: list, key: str, dotted: str) -> Any:
    if not key.isdigit() or int(key) >= len(node):
        raise RecipeError(f"--set {dotted}: {key!r} is not an index of a list of {len(node)}")
    return node[int(key)]


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise RecipeError(f"--set expects key=value, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    if not dotted.strip():
        raise RecipeError(f"--set has an empty key in {assignment!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {dotted}: value is not valid YAML: {exc}") from None
    set_field(data, dotted, value)


def load_recipe(name_or_path: str = DEFAULT_RECIPE, overrides: list[str] | None = None,
                profile: str | None = None) -> Recipe:
    """Load a built-in recipe (by name) or a YAML file, apply a profile and ``--set`` overrides, validate.

    A recipe file may define ``profiles``: named sets of overrides (``smoke`` for a tiny sample that runs
    in a few minutes, ``full`` for the GPU settings). ``--set`` overrides apply after the profile.
    """
    path = _recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections")
    profiles = data.pop("profiles", None) or {}
    if profile:
        if profile not in profiles:
            raise RecipeError(f"recipe {path.stem} has no profile {profile!r}; profiles: {', '.join(profiles) or 'none'}")
        for key, value in profiles[profile].items():
            set_field(data, key, value)
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).replace('validate_', 'validate')}: {err['msg']}"
            for err in exc.errors()
        )
        raise RecipeError(f"recipe {path.stem}: {problems}") from None


def recipe_help() -> str:
    """Every field of the schema with its type, default and description, for ``--help``."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = field.alias or name
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{key}.")
                continue
            default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
            desc = f"  {field.description}" if field.description else ""
            lines.append(f"  {prefix}{key} = {default}{desc}")

    walk(Recipe, "")
    return "\n".join(lines)
