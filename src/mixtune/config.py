"""Typed recipe schema, YAML loading, `key.sub=value` overrides and validation.

A recipe is one YAML file loaded into frozen pydantic models. Unknown keys, wrong types and out-of-range values fail
at load with the file and the dotted key path (`recipes/x.yaml: train.lr: Input should be greater than 0`). Every
field's docstring is its help text (`mixtune <verb> --help` prints them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class RecipeError(ValueError):
    """A recipe that cannot be loaded; the message names the file and the key path."""


class Section(BaseModel):
    """Base of every recipe section: frozen, unknown keys forbidden, field docstrings as descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, protected_namespaces=())


# ----------------------------------------------------------------------------------------------------------- world
class WorldConfig(Section):
    """The mini-lab world: seeded generators for people, math, code, instructions and knowledge QA."""

    seed: int = 1234
    """Seed of every generator; the same seed gives byte-identical files."""
    out_dir: str = "runs/world-mini"
    """Folder the world files are written to (corpus, SFT sources, benchmarks)."""
    n_people: int = Field(400, ge=10)
    """Number of bioS-style people."""
    bio_exposures: int = Field(20, ge=1)
    """Biographies per person in the pre-training corpus (template and sentence order re-drawn each time)."""
    qa_train_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    """Fraction of people whose knowledge questions go to SFT; questions about the rest are held out."""
    math_train: int = Field(4000, ge=0)
    """Math word problems for SFT."""
    math_test: int = Field(300, ge=0)
    """Held-out math word problems."""
    code_train: int = Field(4000, ge=0)
    """Code tasks for SFT."""
    code_test: int = Field(200, ge=0)
    """Held-out code tasks (HumanEval format, hidden tests)."""
    instruct_train: int = Field(4000, ge=0)
    """Verifiable-instruction examples for SFT (the mini-lab's general ability)."""
    instruct_test: int = Field(300, ge=0)
    """Held-out verifiable-instruction prompts (IFEval format)."""
    knowledge_test: int = Field(300, ge=0)
    """Held-out knowledge questions, drawn from the questions about the held-out people (1 - qa_train_fraction)."""
    pretrain_math: int = Field(20000, ge=0)
    """Arithmetic statements in the pre-training corpus."""
    pretrain_code: int = Field(6000, ge=0)
    """Code snippets in the pre-training corpus."""
    pretrain_text: int = Field(10000, ge=0)
    """Plain-text paragraphs in the pre-training corpus."""


# ------------------------------------------------------------------------------------------------------- tokenizer
class TokenizerConfig(Section):
    """Byte-level BPE trained with HF tokenizers; digits split into single tokens."""

    vocab_size: int = Field(2048, ge=300)
    """Target vocabulary size, special tokens included."""
    min_frequency: int = Field(2, ge=1)
    """Minimum pair frequency for a merge."""
    files: list[str] = Field(default_factory=list)
    """Text/JSONL files to train on; empty means the world's corpus and SFT sources."""
    out_dir: str = "runs/tokenizer-mini"
    """Folder the transformers tokenizer is saved to."""


# ----------------------------------------------------------------------------------------------------------- model
class ModelConfig(Section):
    """Either a local Hugging Face checkpoint (`path`) or a Llama-architecture model built from the size fields."""

    path: str | None = None
    """Local checkpoint folder (config.json + safetensors). Nothing is fetched from a hub."""
    tokenizer: str | None = None
    """Tokenizer folder; defaults to `path`."""
    hidden_size: int = Field(128, ge=8)
    """Width of a built model."""
    intermediate_size: int = Field(512, ge=8)
    """FFN width of a built model."""
    num_layers: int = Field(4, ge=1)
    """Transformer blocks of a built model."""
    num_heads: int = Field(4, ge=1)
    """Attention heads of a built model."""
    num_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); defaults to num_heads."""
    max_position_embeddings: int = Field(1024, ge=16)
    """Longest sequence a built model supports."""
    rope_theta: float = Field(10000.0, gt=0)
    """RoPE base of a built model."""
    tie_word_embeddings: bool = True
    """Share input and output embeddings in a built model."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel (flash-attention-2 can be set on GPUs through a real checkpoint's config)."""


# ------------------------------------------------------------------------------------------------------------ data
Format = Literal["auto", "alpaca", "sharegpt", "messages", "gsm8k", "humaneval", "text"]
Ability = Literal["math", "code", "general", "knowledge", "text"]


class SourceConfig(Section):
    """One SFT data source and how much of it to draw."""

    name: str
    """Name used in logs, manifests and the per-source eval loss."""
    path: str | None = None
    """File to read (JSON list or JSONL, .gz allowed)."""
    minilab: Literal["math", "code", "general", "knowledge"] | None = None
    """Instead of `path`: the mini-lab world's SFT source for this ability."""
    format: Format = "auto"
    """Record format; `auto` detects it from the first record."""
    ability: Ability | None = None
    """Ability the examples train; defaults to the mini-lab ability or the format's natural one."""
    task_type: int | None = Field(None, ge=0, le=1)
    """LoRAMoE type for every example (1 world knowledge, 0 other); defaults to 1 for knowledge, else 0."""
    fraction: float | None = Field(None, gt=0.0)
    """Draw this fraction of the source (≤ 1 without replacement)."""
    count: int | None = Field(None, ge=1)
    """Draw this many examples."""
    ratio: float | None = Field(None, gt=0.0)
    """Draw ratio × (examples drawn from `relative_to`)."""
    relative_to: str | None = None
    """Source name the ratio refers to."""
    replace: bool = False
    """Sample with replacement (needed to draw more than the source holds)."""
    eval_count: int = Field(0, ge=0)
    """Examples held out of training for the per-source eval loss."""
    skip_invalid: bool = False
    """Skip records that fail validation instead of failing the run (each skip is counted, logged and recorded
    in the manifest)."""

    @model_validator(mode="after")
    def _one_origin_one_amount(self) -> SourceConfig:
        if (self.path is None) == (self.minilab is None):
            raise ValueError("give exactly one of `path` or `minilab`")
        amounts = [k for k in ("fraction", "count", "ratio") if getattr(self, k) is not None]
        if len(amounts) > 1:
            raise ValueError(f"give at most one of fraction/count/ratio, got {amounts}")
        if (self.ratio is None) != (self.relative_to is None):
            raise ValueError("`ratio` and `relative_to` go together")
        if self.fraction is not None and self.fraction > 1 and not self.replace:
            raise ValueError("fraction > 1 needs replace: true")
        return self


class DataConfig(Section):
    """SFT data: sources, chat template, sequence length and packing."""

    sources: list[SourceConfig] = Field(default_factory=list)
    """The sources of the mixture."""
    template: Literal["tokenizer", "chatml", "vicuna"] = "tokenizer"
    """Chat template: the tokenizer's own, ChatML, or the Vicuna v1.1 template of the DMT paper."""
    system_prompt: str | None = None
    """System message prepended to every conversation that has none."""
    max_seq_len: int = Field(512, ge=16)
    """Longest tokenised example; longer ones are truncated (counted and reported)."""
    packing: bool = True
    """Best-fit-decreasing packing into rows ≤ max_seq_len with no attention across examples; else padding."""
    pack_len: int | None = Field(None, ge=16)
    """Packed row length (default max_seq_len; never below a micro-batch's longest example). Shorter rows cut the
    quadratic attention cost of tiny models on CPU."""
    shuffle_seed: int = 0
    """Seed of the mixture draw and per-epoch reshuffles."""


# ----------------------------------------------------------------------------------------------------------- train
class TrainConfig(Section):
    """Optimisation of one stage (pre-training or SFT)."""

    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate as a fraction of the peak (cosine floor / WSD end)."""
    schedule: Literal["cosine", "wsd", "constant", "linear"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Warm-up as a fraction of all optimizer steps."""
    decay_ratio: float = Field(0.2, ge=0, le=1)
    """WSD: the cooldown's share of all steps."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the stage's data (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps; overrides epochs."""
    batch_size: int = Field(16, ge=1)
    """Examples (SFT) or rows (pre-training) per optimizer step."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step (the step's examples are split across them)."""
    seq_len: int = Field(256, ge=8)
    """Pre-training row length in tokens."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm (0 disables)."""
    bf16: bool = True
    """bf16 autocast (CPU and GPU)."""
    threads: int = Field(1, ge=1)
    """torch CPU threads for this run (one per run is fastest on small machines)."""
    seed: int = 0
    """Seed of initialisation, dropout and data order."""
    log_every: int = Field(10, ge=1)
    """Steps between metric lines."""
    eval_every: int = Field(0, ge=0)
    """Steps between eval-loss passes (0: only at the end)."""
    save_every: int = Field(0, ge=0)
    """Steps between checkpoints (0: only at the end)."""
    eval_batches: int = Field(20, ge=1)
    """Pre-training: held-out batches per eval-loss pass."""
    fresh_optimizer: bool = True
    """Multi-stage: each stage starts with a new optimizer and schedule (DMT §3.5)."""
    tensorboard: bool = False
    """Also log metrics to TensorBoard in the run folder."""
    compile: bool = False
    """Speed: torch.compile (inductor) the decoder layers; a one-off compile, then faster steps; changes rounding."""
    fused_ce: bool = False
    """Speed: output layer + cross-entropy in row chunks, gradients in the forward pass; changes rounding."""
    packed_attention: bool = False
    """Speed: attention per example, not through a block mask; one unpadded row per micro-batch; changes rounding."""
    fused_adamw: bool = False
    """Speed: AdamW as one fused kernel per tensor (else the bit-identical foreach form); changes rounding."""


# --------------------------------------------------------------------------------------------------------- adapter
class AdapterConfig(Section):
    """Parameter-efficient fine-tuning; `none` trains every weight."""

    type: Literal["none", "lora", "loramoe", "prefix", "prompt", "bottleneck"] = "none"
    """Adapter kind."""
    r: int = Field(8, ge=1)
    """LoRA / LoRAMoE rank."""
    alpha: float = Field(16.0, gt=0)
    """LoRA / LoRAMoE scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """LoRA: module names to adapt."""
    num_experts: int = Field(6, ge=2)
    """LoRAMoE: experts per linear (the first half form the world-knowledge group)."""
    lbc_weight: float = Field(0.1, ge=0)
    """LoRAMoE: beta, weight of the localized balancing loss (0 disables it)."""
    lbc_delta: float = Field(0.1, ge=0, lt=1)
    """LoRAMoE: delta, the importance coefficient margin."""
    lbc_form: Literal["cv2", "var_mean"] = "cv2"
    """LoRAMoE: CV² = Var/Mean² (official code) or Var/Mean (paper)."""
    lbc_mask_padding: bool = True
    """LoRAMoE: sum importance over real tokens only (the official code also sums padding)."""
    num_virtual_tokens: int = Field(16, ge=1)
    """Prefix / prompt tuning: virtual tokens."""
    bottleneck_size: int = Field(32, ge=1)
    """Bottleneck adapter width m."""


# ------------------------------------------------------------------------------------------------------------ eval
class JudgeConfig(Section):
    """An OpenAI-compatible chat endpoint used as the MT-Bench judge."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Endpoint base URL (…/v1)."""
    model: str = "gpt-4"
    """Judge model name."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (may be unset for local servers)."""
    concurrency: int = Field(4, ge=1)
    """Requests in flight at once."""
    max_retries: int = Field(5, ge=0)
    """Retries with exponential backoff on errors and 429/5xx."""
    timeout_s: float = Field(60.0, gt=0)
    """Per-request timeout."""
    cache_dir: str = "runs/judge-cache"
    """Verdict cache on disk (keyed by judge model and prompt)."""


class EvalConfig(Section):
    """Ability benchmarks: which to run, how to generate, where the data lies."""

    benchmarks: list[str] = Field(default_factory=list)
    """Benchmark names from the task registry (`mixtune eval list`)."""
    limit: int | None = Field(None, ge=1)
    """Examples per benchmark (None: all)."""
    data_dir: str = "../shared/data"
    """Folder of the real benchmark files."""
    world_dir: str | None = None
    """Mini-lab world folder for the minilab_* benchmarks (default: the recipe's world.out_dir)."""
    backend: Literal["hf", "openai"] = "hf"
    """Generate with the trained model (transformers, KV cache) or an OpenAI-compatible server."""
    base_url: str | None = None
    """OpenAI backend: server base URL."""
    served_model: str | None = None
    """OpenAI backend: model name."""
    batch_size: int = Field(32, ge=1)
    """Prompts per generation batch."""
    max_new_tokens: int = Field(256, ge=1)
    """Generation budget per answer."""
    temperature: float = Field(0.0, ge=0)
    """0 is greedy."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling."""
    n_samples: int = Field(1, ge=1)
    """Samples per prompt (code pass@k)."""
    pass_k: list[int] = Field(default_factory=lambda: [1])
    """k values for pass@k."""
    every_n_steps: int = Field(0, ge=0)
    """During training: also evaluate every N steps on `subset` examples (0: only after each stage)."""
    subset: int = Field(50, ge=1)
    """Examples per benchmark for the every-N-steps evaluation."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """MT-Bench judge."""


# -------------------------------------------------------------------------------------------------------- strategy
class StageSpec(Section):
    """One stage of an explicit stage plan."""

    name: str
    """Stage name (used for folders, logs and the per-stage scores)."""
    sources: list[str]
    """Names of data sources trained in full in this stage."""
    replay: dict[str, float] = Field(default_factory=dict)
    """source name -> k: also train a random k·|D| subset of that source (DMT's replay)."""


class StrategyConfig(Section):
    """How the sources are split into stages (DMT paper §3.5, METHODS.md §1)."""

    name: Literal["multi_task", "sequential", "mixed_sequential", "dmt", "stages"] = "multi_task"
    """multi_task: one stage on all; sequential: one stage per ability in `order`; mixed_sequential: specialised
    then general; dmt: specialised, then general + k of each specialised source; stages: the explicit list."""
    k: float = Field(1 / 256, ge=0, le=1)
    """DMT: replayed fraction of each specialised source in stage 2 (0 is mixed sequential)."""
    order: list[str] = Field(default_factory=lambda: ["code", "math", "general"])
    """sequential: ability order of the stages (general last forgets the specialised abilities)."""
    specialized: list[str] = Field(default_factory=lambda: ["code", "math"])
    """mixed_sequential / dmt: abilities of stage 1."""
    general: list[str] = Field(default_factory=lambda: ["general"])
    """mixed_sequential / dmt: abilities of stage 2."""
    stages: list[StageSpec] = Field(default_factory=list)
    """The explicit plan for name=stages."""


# ----------------------------------------------------------------------------------------------------------- study
class StudyRun(Section):
    """One row of a study grid: a strategy over some of the recipe's sources."""

    label: str
    """Name in tables and plots (e.g. "DMT k=1/64")."""
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    """The stage plan."""
    sources: list[str] = Field(default_factory=list)
    """Source names to use (empty: all); a single source makes a single-ability run."""
    overrides: list[str] = Field(default_factory=list)
    """key.sub=value overrides of this run's recipe (e.g. adapter.type=lora, train.lr=2e-3)."""


class RatioSetup(Section):
    """DMT RQ3: vary the specialised (math ∪ code) or general share while the other side stays fixed."""

    label: str
    """Set-up name (e.g. "full general + f specialised")."""
    vary: Literal["specialized", "general"]
    """Which side gets the grid's fractions."""
    fixed_fraction: float = Field(1.0, gt=0, le=1)
    """Fraction of the other side (1 or 1/64 in the paper)."""


class StudyConfig(Section):
    """A grid of runs × data fractions × seeds from one shared base model (`mixtune study`)."""

    base_recipe: str = "recipes/base-mini.yaml"
    """Recipe of the base model (world, tokenizer, pre-training); prepared once, cached."""
    runs: list[StudyRun] = Field(default_factory=list)
    """The strategies compared."""
    fractions: list[float] = Field(default_factory=lambda: [1.0])
    """Data fractions applied to every source (DMT RQ1/RQ2: 1, 1/4, 1/16, 1/64, 1/256)."""
    seeds: list[int] = Field(default_factory=lambda: [0])
    """Seeds: data draw, order and initialisation of adapters."""
    protocol: Literal["fixed_epochs", "matched_steps"] = "fixed_epochs"
    """fixed_epochs (the paper's): steps shrink with the data; matched_steps: every fraction gets the optimizer
    steps of the full data (epochs scaled by 1/fraction), so data amount is not confounded with steps."""
    ratio_setups: list[RatioSetup] = Field(default_factory=list)
    """RQ3 ratio set-ups, each run as multi-task over the grid's fractions."""
    workers: int = Field(2, ge=1)
    """Runs executed in parallel (one torch thread each)."""
    specialized: list[str] = Field(default_factory=lambda: ["math", "code"])
    """Abilities forming the specialised side of ratio set-ups."""


# ---------------------------------------------------------------------------------------------------------- recipe
class Recipe(Section):
    """A whole recipe. Each verb reads the sections it needs."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Run name; the run folder is `runs/<name>/` unless `out_dir` is given."""
    out_dir: str | None = None
    """Run folder."""
    seed: int = 0
    """Global seed."""
    world: WorldConfig = Field(default_factory=WorldConfig)
    """Mini-lab world."""
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """Tokenizer training."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Model to train."""
    data: DataConfig = Field(default_factory=DataConfig)
    """SFT data."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Optimisation."""
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    """Adapter (PEFT)."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Ability evaluation."""
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    """SFT strategy: the stage plan."""
    study: StudyConfig = Field(default_factory=StudyConfig)
    """Study grid (`mixtune study`)."""
    pretrain_corpus: list[str] = Field(default_factory=list)
    """Pre-training text files (JSONL with `text`, or plain text); empty means the world's corpus."""

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


# --------------------------------------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` → (["train", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError(f"override {text!r}: empty key")
    return path, yaml.safe_load(raw) if raw.strip() else ""


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    """Set `value` at the dotted `path` of a recipe tree; a numeric part indexes a list (`data.sources.0.count`)."""
    node: Any = tree
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"override {'.'.join(path)}: {where} is not an index of a {len(node)}-item list")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"override {'.'.join(path)}: {'.'.join(path[:depth])} is not a section")
        if last:
            node[part] = value
            return
        if node.get(part) is None:
            node[part] = {}
        node = node[part]


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{source}: {loc}: {e['msg']}")
    return "\n".join(lines)


def load_tree(path: str | Path) -> dict:
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(tree).__name__}")
    return tree


def validate(model: type[BaseModel], tree: dict, source: str) -> BaseModel:
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise RecipeError(format_validation_error(source, e)) from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), model: type[BaseModel] = Recipe):
    """Load a YAML recipe into `model` (default `Recipe`), applying `key.sub=value` overrides first."""
    tree = load_tree(path)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    return validate(model, tree, str(path))


def dump_recipe(recipe: BaseModel) -> str:
    """The resolved recipe as YAML (every default spelled out)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def describe_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, docstring) for every field, nested sections expanded: the recipe help."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        key = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, key + "."))
            continue
        default = "" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((key, default, field.description or ""))
    return rows
