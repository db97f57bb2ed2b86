"""Typed parameters of the `recaption` stage: which rows, which backends in which order, each
backend's own section, the teacher that scores the captions, the Ray Data actor pool.

Pydantic only: validating them imports neither torch nor transformers. A params mistake that
pydantic cannot see (a missing model folder, an HF path that does not exist) is checked by
`RecaptionParams.preflight()` before any work, with one line naming the field.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from tasks.base import ParamsSection, StageParams


class PathsParams(ParamsSection):
    """Where things are; relative paths resolve against the settings' root (tasks/io/paths.py).
    The pool is the one the settings name (CLIPMILL_LANCEDB_URI), where crawl wrote it."""

    # fmt: off
    crawl_dir: str = "data/crawl"  # crawl output; the pool's `shard` column is relative to it
    out_dir: str = "data/recaption"  # parts/<fingerprint>/ (one parquet + marker per block), summary.json, report/
    teacher: str | None = "data/models/teacher"  # CLIP that scores captions and runs the tagger: folder, models:/ URI or random:<config>; None = no scores
    wordnet: str = "data/sample/metadata/wordnet.parquet"  # WordNet metadata (the sample stage's): tagger vocabulary, composer co-hyponyms
    # fmt: on


class SelectParams(ParamsSection):
    """Which pool rows are recaptioned: cheap checks so a large pool spends model time only on
    rows that can pass curate's basic filter (curate's own `basic` section decides later)."""

    # fmt: off
    only_passing: bool = True  # recaption only rows passing the cheap checks below (False = every downloaded row)
    min_side: int = Field(default=64, ge=0)  # px; shorter side of the stored image, as curate's basic.min_side
    min_words: int = Field(default=2, ge=0)  # words in the alt text, as curate's basic.min_words
    max_rows: int | None = Field(default=None, ge=1)  # first N selected rows in (shard, uid) order; None = all
    exclude_uids: str | None = None  # parquet with a `uid` column (decontaminate's flagged_uids.parquet): eval copies no model trains on are not recaptioned; None = none
    # fmt: on


class TaggerParams(ParamsSection):
    """Backend `tagger`: the teacher ranks WordNet noun entries for each image."""

    # fmt: off
    vocabulary: str = "imagenet21k"  # noun synsets used: imagenet21k (those in ImageNet-21k) or all
    pool_only: bool = True  # keep only entries some pool alt text names as a whole word or phrase (MetaCLIP-style matching; the demo's 20,101 ImageNet-21k nouns -> 1,298)
    top_k: int = Field(default=5, ge=1, le=50)  # short positive tags: the k entries scoring highest for the image
    negatives: int = Field(default=3, ge=0, le=50)  # short negative tags per image
    neighbours: int = Field(default=20, ge=1, le=500)  # text-space neighbours of each positive considered for negatives
    negative_min_rank: int = Field(default=200, ge=1)  # a negative must rank below this for the image (plausible in text, wrong for the image)
    # fmt: on

    @field_validator("vocabulary")
    @classmethod
    def _known_vocabulary(cls, value: str) -> str:
        if value not in ("imagenet21k", "all"):
            raise ValueError(f"tagger.vocabulary must be imagenet21k or all, got {value!r}")
        return value


class ComposerParams(ParamsSection):
    """Backend `composer`: long texts written from the alt text and the tags, no model."""

    # fmt: off
    tags_in_positive: int = Field(default=3, ge=0, le=20)  # positive tags named in the long positive
    max_chars: int = Field(default=300, ge=20)  # long texts are cut at this many characters
    # fmt: on


class HFParams(ParamsSection):
    """Backend `hf`: a transformers vision-language model prompted for the four fields as JSON."""

    # fmt: off
    model: str | None = None  # local folder or hub id (HF_HUB_OFFLINE honoured); None = backend unusable
    prompt: str = "Describe the image as JSON with keys long_positive, long_negative, short_positive, short_negative. Alt text: {alt_text}"  # {alt_text} is filled in
    max_new_tokens: int = Field(default=256, ge=1, le=4096)  # generation length per image
    dtype: str = "float32"  # torch dtype of the weights: float32, float16 or bfloat16
    device: str = "auto"  # auto (cuda when present), cpu or cuda
    timeout_s: float = Field(default=120.0, ge=0.0)  # seconds of generation per image (a batch gets n times it); a row over it fails with reason timeout (0 = no limit)
    # fmt: on


class OpenAIParams(ParamsSection):
    """Backend `openai`: an OpenAI-compatible chat-completions server (vLLM, SGLang, TGI)."""

    # fmt: off
    base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1; None = backend unusable
    model: str = "default"  # the server's model name, sent in every request
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (never a param); unset = no key
    prompt: str = "Describe the image as JSON with keys long_positive, long_negative, short_positive, short_negative. Alt text: {alt_text}"  # {alt_text} is filled in
    max_tokens: int = Field(default=512, ge=1)  # reply length limit sent to the server
    concurrency: int = Field(default=8, ge=1, le=256)  # requests in flight per actor
    timeout_s: float = Field(default=60.0, gt=0)  # seconds per request (connect + read)
    retries: int = Field(default=2, ge=0, le=20)  # retries after a 5xx, a closed connection or a timeout
    backoff_s: float = Field(default=0.5, ge=0)  # seconds before the first retry, doubled each time
    # fmt: on


class CocaParams(ParamsSection):
    """Backend `coca`: an open_clip CoCa trained by the train stage (params/coca.yaml) writes the
    long positive caption, by beam search or top-p sampling (tasks/recaption/backends/coca.py)."""

    # fmt: off
    model: str = "data/models/coca"  # CoCa model folder (train stage output), models:/ URI or random:<coca config> (tests)
    generation: str = "top_p"  # top_p (nucleus sampling, MobileCLIP's choice) or beam_search
    top_p: float = Field(default=0.9, gt=0, le=1)  # nucleus: sample from the smallest token set holding this probability
    temperature: float = Field(default=1.0, gt=0)  # softmax temperature of top-p sampling
    num_beams: int = Field(default=4, ge=1, le=32)  # beams of beam_search
    length_penalty: float = Field(default=1.0, ge=0)  # beam score = log-prob / length**this
    max_tokens: int = Field(default=30, ge=2)  # generated tokens at most (capped by the model's context length)
    min_tokens: int = Field(default=3, ge=0)  # end-of-text is blocked before this many tokens
    device: str = "auto"  # auto (cuda when present), cpu or cuda
    # fmt: on

    @field_validator("generation")
    @classmethod
    def _known_generation(cls, value: str) -> str:
        if value not in ("top_p", "beam_search"):
            raise ValueError(f"coca.generation must be top_p or beam_search, got {value!r}")
        return value


class OutputLimitsParams(ParamsSection):
    """What a backend's output must look like to be kept (else the row gets a reason)."""

    # fmt: off
    max_chars: int = Field(default=2000, ge=1)  # a long text longer than this is absurd: the row is flagged
    max_tags: int = Field(default=32, ge=1)  # at most this many tags per list are kept
    # fmt: on


class ComputeParams(ParamsSection):
    """The Ray Data actor pool: the model loads once per actor."""

    # fmt: off
    rows_per_block: int = Field(default=256, ge=1)  # rows per completion-marked block (the resume unit)
    batch_size: int = Field(default=32, ge=1)  # images per backend call inside a block
    min_actors: int = Field(default=1, ge=1)  # actor pool lower bound
    max_actors: int = Field(default=1, ge=1)  # actor pool upper bound (leave a core for reads on 2 CPUs)
    cpus_per_actor: float = Field(default=1.0, gt=0)  # CPUs reserved per actor
    gpus_per_actor: float = Field(default=0.0, ge=0)  # GPUs per actor, fractional allowed (0.25 = four actors per GPU)
    torch_threads: int = Field(default=0, ge=0)  # torch threads per actor; 0 = cpus_per_actor rounded up
    # fmt: on


class ScoresParams(ParamsSection):
    """Which captions the teacher scores against their image (the alt text and the long positive
    always, when a teacher is set)."""

    # fmt: off
    long_negative: bool = False  # also score the long negative (one more text forward per row; a check that it scores lower)
    # fmt: on


class ReportParams(ParamsSection):
    """The report: score distributions and image grids with old and new captions."""

    # fmt: off
    examples: int = Field(default=12, ge=0, le=200)  # images in each grid (improved, worsened); 0 = no grids
    # fmt: on


class RecaptionParams(StageParams):
    """HQ-CLIP's four annotations per pool row; see params/recaption.yaml."""

    # fmt: off
    backends: list[str] = ["tagger", "composer"]  # backends in chain order; each fills the fields the earlier left empty
    seed: int = 0  # composer's co-hyponym choice and report sampling
    paths: PathsParams = PathsParams()  # pool, crawl, outputs, teacher, WordNet
    select: SelectParams = SelectParams()  # which rows are recaptioned
    tagger: TaggerParams = TaggerParams()  # backend tagger
    composer: ComposerParams = ComposerParams()  # backend composer
    hf: HFParams = HFParams()  # backend hf (transformers VLM)
    openai: OpenAIParams = OpenAIParams()  # backend openai (chat-completions server)
    coca: CocaParams = CocaParams()  # backend coca (open_clip CoCa captioner)
    limits: OutputLimitsParams = OutputLimitsParams()  # output sanity limits
    compute: ComputeParams = ComputeParams()  # Ray Data actor pool
    scores: ScoresParams = ScoresParams()  # which captions the teacher scores
    report: ReportParams = ReportParams()  # distributions and grids
    # fmt: on

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, value: list[str]) -> list[str]:
        from tasks.recaption.backends.base import BACKENDS

        if not value:
            raise ValueError("backends: at least one backend is needed")
        unknown = [b for b in value if b not in BACKENDS]
        if unknown:
            raise ValueError(
                f"unknown backend {unknown[0]!r}; known: {', '.join(sorted(BACKENDS))}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"a backend is listed twice: {value}")
        return value
