"""The mitigation methods: one registry (:data:`METHODS`) of interventions applied during training, each
with its matched random control, and :class:`Ingredients`, which computes what they need once.

At relative strength s (s = 0 is vanilla, bit for bit; s = 1 is each method's unit):

==============  =====================================================  ==============================
method          intervention                                           control
==============  =====================================================  ==============================
inhibit-zero    zero the top s·percent% general neurons (InhibitFT)    layer-matched random neurons
inhibit-freeze  hold those neurons' weights fixed                      layer-matched random neurons
stopgrad        forward unchanged, no gradient through those neurons   layer-matched random neurons
caft            ablate leaning directions from the residual stream:    random subspace, same rank
                h − s·(h·Q)Qᵀ at the chosen layers (CAFT)              and layers
caft-grad       the same, gradient only (forward unchanged)            random subspace
caft-flip       caft with flip directions, whatever ``directions``     random subspace, same rank
                says (so one folder holds both curves)                 and layers
steer           add s·v at one middle layer (preventative steering),   random vector, same norm
                v = the leaning's mean answer difference
kl              loss += s·β·KL(p_θ ‖ p_base) on the other topics'      the same on neutral text
                training texts
replay          loss += s·(LM loss on the base model's own greedy      the same on its answers to
                answers to the other topics' training questions)       as many neutral prompts
caft+kl         caft at 0.1·s and kl at 0.25·s together                both controls together
caft+steer      caft at 0.1·s and steer at 1.5·s together              both controls together
==============  =====================================================  ==============================

CAFT's directions (``directions``): ``leaning``, the base model's right − left answer direction on the
other topics, orthogonal to the target's own; ``pca``, the top PCs of (vanilla − base) on the other
topics' texts; ``flip``, the top PCs of (right − left vanilla fine-tune) there; pca and flip with the
same measured on the target's texts projected out (:func:`polineurons.directions.spill_directions`),
read from every token or the answers only (``direction_tokens``). Where they act (``layers``):
:mod:`polineurons.layer_search`; how the two changes share the residual stream: :mod:`polineurons.geometry`.

Each method's default strengths span roughly 80–100% of the target kept at the quick settings (16
steps at lr 1e-4) on the embedded model: ``caft`` and ``steer`` from their curves measured there (3 seeds
on a GPU: caft keeps 89/78/68/52% at 0.05/0.1/0.15/0.25, steer 87/80/73% at 1/1.5/2); the others scaled
from one seed at strength 1 with one epoch (kl 73%, inhibit-freeze and stopgrad ~100%; at these
settings, 3 seeds on a CPU, 98/99% at 1) — kl not yet measured here; ``inhibit-zero``'s from its curve
on a CPU with the default localizer's general set (3 seeds: 95% at 0.005; seed 0: 63% at 0.02);
``replay``'s
from one seed on a CPU (kept 88% at 0.25, 63% at 1); ``caft-flip``'s from its curve on a CPU (rank 1,
3 seeds: kept 93/86% at 0.25/0.5; seed 0: 96% at 0.1); a combination puts each part at s times a fixed
unit, that part's largest default strength (caft 0.1, kl 0.25, steer 1.5; not yet measured). Longer
training keeps more of the target at the same strength (one epoch, 27 steps: caft 96/90/88/78% at
0.05/0.1/0.15/0.25).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch

from polineurons.data.loaders import load_neutral
from polineurons.data.prompts import encode_prompt, encode_text
from polineurons.directions import leaning_directions, random_like, random_vector, spill_directions
from polineurons.errors import UserError
from polineurons.generalization import leaning_sign
from polineurons.hooks import (
    AblateDirections,
    Combined,
    FreezeNeurons,
    Intervention,
    ScaleNeurons,
    SteerResidual,
    StopGradNeurons,
)
from polineurons.models import generate_answer_ids
from polineurons.pnlac import Localization
from polineurons.regularizers import KLToBase, Replay
from polineurons.screening import answer_direction, default_layers
from polineurons.stance import neutral_pairs
from polineurons.trial import TrialSpec

MethodName = Literal[
    "inhibit-zero",
    "inhibit-freeze",
    "stopgrad",
    "caft",
    "caft-grad",
    "caft-flip",
    "steer",
    "kl",
    "replay",
    "caft+kl",
    "caft+steer",
]
Directions = Literal["leaning", "pca", "flip"]


@dataclass(frozen=True)
class MitigateConfig:
    """Which mitigations are compared, at which strengths, and their units. Each method's own strengths
    (:data:`METHODS`) span ~80-100% of the target kept at the quick settings: caft 0.025 0.05 0.075 0.1,
    steer 0.5 1 1.5, ..."""

    methods: tuple[MethodName, ...] = ("caft", "steer")
    """Methods compared with vanilla (see polineurons.methods)."""
    strengths: tuple[float, ...] = ()
    """Relative strengths > 0 for every method (empty: each method's own, see polineurons.methods)."""
    controls: bool = True
    """Also train each method's matched random control."""
    percent: float = 5.0
    """Neuron methods: percent of all neurons (top general) per unit of strength."""
    layers: tuple[int, ...] | None = None
    """CAFT layers (None: at 1/5 and 2/5 of the depth, 6 and 12 of 30)."""
    directions: Directions = "leaning"
    """CAFT directions: leaning (base's, orthogonal to the target's), pca (vanilla − base), flip (right − left)."""
    rank: int = 2
    """CAFT with pca or flip: principal components per layer."""
    direction_tokens: Literal["all", "answer"] = "all"
    """CAFT with pca or flip: tokens the directions are read from (answer: not the prompts' shared template)."""
    steer_layer: int | None = None
    """Steering layer (None: the middle one)."""
    kl_beta: float = 1.0
    """KL weight per unit of strength."""
    items: int = 32
    """Training items per topic used for directions, steering vectors, KL texts and replayed answers."""
    replay_tokens: int = 48
    """Replay: new tokens at most in each of the base model's greedy answers."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in get_args(MethodName)]
        if unknown:
            raise ValueError(f"Unknown method(s) {unknown}: use {', '.join(get_args(MethodName))}.")
        if any(not s > 0 for s in self.strengths):
            raise ValueError(f"strengths must be > 0 (0 is vanilla, which every comparison has), got {self.strengths}.")
        if not 0 < self.percent <= 100 or min(self.rank, self.items, self.replay_tokens) < 1 or self.kl_beta < 0:
            raise ValueError("percent must be in (0, 100], rank, items and replay_tokens >= 1, kl_beta >= 0.")

    def strengths_of(self, name: str) -> tuple[float, ...]:
        """The strengths ``name`` is trained at: ``strengths`` if given, else the method's defaults."""
        return self.strengths or method(name).strengths


class Ingredients:
    """What the methods need — general neurons, directions, a steering vector, KL texts, the frozen
    base model — computed once, on first use.

    ``base`` returns the resident base model (never trained); ``vanilla_model`` the first seed's
    vanilla fine-tune (PCA and flip directions only), ``opposite_model`` the same toward the opposite
    leaning (flip directions only). Copied to another process (a Ray worker), ingredients take
    their settings and what they have computed, never a model: :meth:`attach` gives them that process's base."""

    def __init__(
        self,
        settings: MitigateConfig,
        spec: TrialSpec,
        base: Callable[[], object],
        *,
        located: Localization | None = None,
        vanilla_model: Callable[[], object] | None = None,
        opposite_model: Callable[[], object] | None = None,
    ):
        self.settings, self.spec, self._base = settings, spec, base
        self.located, self.vanilla_model, self.opposite_model = located, vanilla_model, opposite_model
        self._cache: dict[str, object] = {}

    def _get(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_base": None, "vanilla_model": None, "opposite_model": None}

    def attach(self, base: Callable[[], object]) -> Ingredients:
        """Use ``base`` for the base model unless one is already given (returns self)."""
        if self._base is None:
            self._base = base
        return self

    @property
    def base(self):
        """The base model (``base()``: the study keeps it resident, so no copy is held here)."""
        if self._base is None:
            raise RuntimeError("These ingredients were copied from another process: attach() its base model.")
        return self._base()

    def general_neurons(self, strength: float, seed: int, control: bool):
        """The top ``strength·percent``% general neurons, or (control) a layer-matched random set drawn
        outside them."""
        if self.located is None:
            raise UserError(
                "The neuron methods need general neurons: give a `polineurons localize` folder (--neurons)."
            )
        neurons = self.located.top_general(strength * self.settings.percent)  # s = 0: no neuron
        return neurons.random_matched(seed=1000 + seed, exclude=neurons) if control else neurons

    def at_layer(self, layer: int, kind: Directions | None = None) -> Ingredients:
        """The same ingredients acting at ``layer`` alone (one of :meth:`layers`; the layer search): the
        directions of ``kind`` (default: ``settings.directions``) are those computed at every layer,
        sliced (each layer's are computed on their own); what else is computed is shared."""
        if layer not in self.layers():
            raise ValueError(f"Layer {layer} is not one of these ingredients' layers {self.layers()}.")
        kind = kind or self.settings.directions
        directions = self.directions(0, control=False, kind=kind)
        view = copy.copy(self)
        view.settings = replace(self.settings, layers=(layer,))
        kept = {key: value for key, value in self._cache.items() if not key.startswith("directions-")}
        view._cache = {**kept, f"directions-{kind}": {layer: directions[layer]}}
        return view

    def layers(self) -> list[int]:
        n_layers = int(self.base.cfg.n_layers)
        return list(self.settings.layers) if self.settings.layers is not None else list(default_layers(n_layers)[:2])

    def directions(self, seed: int, control: bool, kind: Directions | None = None):
        """Orthonormal directions per layer of ``kind`` (default: ``settings.directions``), or (control)
        a random subspace of the same rank at the same layers."""
        kind = kind or self.settings.directions

        def make():
            settings, spec = self.settings, self.spec
            if kind == "leaning":
                return leaning_directions(self.base, spec.dataset, spec.target, self.layers(), max_items=settings.items)
            if self.vanilla_model is None:
                raise UserError("PCA and flip directions need the vanilla fine-tune of the first seed.")
            if kind == "flip" and self.opposite_model is None:
                raise UserError("Flip directions need the first seed's vanilla fine-tunes toward both leanings.")
            # pca: what the fine-tune moved; flip: what the leaning flips — on other topics, not the target
            reference = self.base if kind == "pca" else self.opposite_model()
            (others, other_starts), (own, own_starts) = self.direction_texts(others=True), self.direction_texts()
            starts = (other_starts, own_starts)
            return spill_directions(
                self.vanilla_model(), reference, others, own, self.layers(), settings.rank, starts=starts
            )

        directions = self._get(f"directions-{kind}", make)
        return random_like(directions, seed=1000 + seed) if control else directions

    def steering(self, seed: int, control: bool) -> tuple[int, torch.Tensor]:
        """The leaning's mean answer difference at the steering layer, pointing the trained way."""

        def make():
            n_layers = int(self.base.cfg.n_layers)
            layer = self.settings.steer_layer if self.settings.steer_layer is not None else n_layers // 2
            vector = answer_direction(self.base, self.other_items(), [layer], max_answer_tokens=48)[0].float()
            return layer, leaning_sign(self.spec.leaning) * vector

        layer, vector = self._get("steer", make)
        return layer, random_vector(vector, 1000 + seed) if control else vector

    def other_items(self) -> list:
        """Up to ``items`` training items of every topic but the target."""
        data, target = self.spec.dataset, self.spec.target
        others = [t for t in data.topics if t != target]
        return list(data.select(topics=others, split="train", max_items=self.settings.items).items)

    def texts(self, *, others: bool) -> list[list[int]]:
        """Other topics' training questions with both answers (KL texts), or neutral text (its control)."""

        def make():
            if not others:
                return [p + a for p, a in neutral_pairs(self.base.tokenizer)]
            return self._with_both_answers(self.other_items())[0]

        return self._get(f"texts-{others}", make)

    def target_texts(self) -> list[list[int]]:
        """The target's own training questions (up to ``items``) with both answers."""
        return self._with_both_answers(self.target_items())[0]

    def target_items(self) -> list:
        """Up to ``items`` training items of the target."""
        data, target, n = self.spec.dataset, self.spec.target, self.settings.items
        return list(data.select(topics=[target], split="train", max_items=n).items)

    def direction_texts(self, *, others: bool = False) -> tuple[list[list[int]], list[int]]:
        """The texts pca and flip directions are read from — the other topics' (``others``) or the target's
        training questions with both answers — and each one's first counted position: 0, or its answer's
        first token (``direction_tokens="answer"``: the chat template and system prompt, the same on every
        topic, are left out)."""
        texts, starts = self._with_both_answers(self.other_items() if others else self.target_items())
        return texts, (starts if self.settings.direction_tokens == "answer" else [0] * len(texts))

    def _with_both_answers(self, items: list) -> tuple[list[list[int]], list[int]]:
        """Each item's prompt with its left, then its right answer, and where each answer starts."""
        tokenizer, texts, starts = self.base.tokenizer, [], []
        for item in items:
            prompt = encode_prompt(tokenizer, item.question)
            for side in ("left", "right"):
                texts.append(prompt + encode_text(tokenizer, item.answer(side), prompt_start=False))
                starts.append(len(prompt))
        return texts, starts

    def replay_examples(self, *, others: bool) -> list[tuple[list[int], int]]:
        """The base model's own greedy answers to the other topics' training questions (``others``), or
        to as many neutral prompts (the control), as training examples: prompt + answer token ids, cut
        at the fine-tune's ``max_seq_len``, and where the answer starts."""

        def make():
            questions = [i.question for i in self.other_items()]
            if not others:
                neutral = [q for q, _ in load_neutral()]
                questions = (neutral * (len(questions) // len(neutral) + 1))[: len(questions)]
            answers = generate_answer_ids(
                self.base, questions, max_new_tokens=self.settings.replay_tokens, progress=True
            )
            prompts = [encode_prompt(self.base.tokenizer, q) for q in questions]
            max_len = self.spec.finetune.max_seq_len
            return [((p + a)[:max_len], len(p)) for p, a in zip(prompts, answers, strict=True) if len(p) < max_len]

        return self._get(f"replay-{others}", make)


def _inhibit(kind: Callable) -> Callable:
    return lambda ing, s, seed, control: kind(ing.general_neurons(s, seed, control))


def _caft(gradient_only: bool, kind: Directions | None = None) -> Callable:
    def build(ing: Ingredients, s: float, seed: int, control: bool) -> Intervention:
        return AblateDirections(ing.directions(seed, control, kind), s, gradient_only=gradient_only)

    return build


def _steer(ing: Ingredients, s: float, seed: int, control: bool) -> Intervention:
    layer, vector = ing.steering(seed, control)
    return SteerResidual(layer, vector, s)


def _kl(ing: Ingredients, s: float, seed: int, control: bool) -> Intervention:
    return KLToBase(ing.base, ing.texts(others=not control), s * ing.settings.kl_beta, seed=seed)


def _replay(ing: Ingredients, s: float, seed: int, control: bool) -> Intervention:
    examples = ing.replay_examples(others=not control)
    return Replay(examples, s, batch_size=ing.spec.finetune.batch_size, seed=seed)


def _together(*parts: tuple[str, float]) -> Callable:
    """Registered methods applied at once, each at s × its unit here (the controls: theirs, at once)."""

    def build(ing: Ingredients, s: float, seed: int, control: bool) -> Intervention:
        return Combined(tuple(METHODS[name].build(ing, s * unit, seed, control) for name, unit in parts))

    return build


@dataclass(frozen=True)
class Method:
    """One mitigation: how it is built at strength s (and as its control), its default strengths,
    and the settings its result depends on (they go into each trial's key)."""

    name: str
    build: Callable[[Ingredients, float, int, bool], Intervention]
    strengths: tuple[float, ...]
    uses: tuple[str, ...]
    neurons: bool = False  # needs general neurons (their fingerprint is part of the recipe)
    directions: Directions | None = None  # the directions it always ablates (None: ``directions``, if it uses it)


_DIRECTIONS = ("layers", "directions", "rank", "items")
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("inhibit-zero", _inhibit(lambda n: ScaleNeurons(n, 0.0)), (0.005, 0.01, 0.02), ("percent",), True),
        Method("inhibit-freeze", _inhibit(FreezeNeurons), (1.0, 2.0, 4.0), ("percent",), True),
        Method("stopgrad", _inhibit(StopGradNeurons), (1.0, 2.0, 4.0), ("percent",), True),
        Method("caft", _caft(False), (0.025, 0.05, 0.075, 0.1), _DIRECTIONS),
        Method("caft-grad", _caft(True), (0.25, 0.5, 1.0), _DIRECTIONS),
        Method("caft-flip", _caft(False, "flip"), (0.1, 0.25, 0.5), ("layers", "rank", "items"), directions="flip"),
        Method("steer", _steer, (0.5, 1.0, 1.5), ("steer_layer", "items")),
        Method("kl", _kl, (0.05, 0.1, 0.25), ("kl_beta", "items")),
        Method("replay", _replay, (0.1, 0.25, 0.5), ("replay_tokens", "items")),
        Method("caft+kl", _together(("caft", 0.1), ("kl", 0.25)), (0.25, 0.5, 1.0), (*_DIRECTIONS, "kl_beta")),
        Method("caft+steer", _together(("caft", 0.1), ("steer", 1.5)), (0.25, 0.5, 1.0), (*_DIRECTIONS, "steer_layer")),
    )
}


def method(name: str) -> Method:
    """The registered method called ``name`` (an unknown name is an error, never a fallback)."""
    if name not in METHODS:
        raise UserError(f"Unknown mitigation method '{name}': use {', '.join(METHODS)}.")
    return METHODS[name]


def directions_of(name: str, config: MitigateConfig) -> Directions | None:
    """Which directions method ``name`` ablates under ``config`` (None: it ablates none)."""
    chosen = method(name)
    return chosen.directions or (config.directions if "directions" in chosen.uses else None)


def neurons_fingerprint(located: Localization | None) -> str | None:
    """A hash of the general set and the scores that rank it (what the neuron methods select from)."""
    if located is None:
        return None
    digest = hashlib.sha256(located.general.mask.numpy().tobytes())
    for topic in sorted(located.scores):
        digest.update(topic.encode())
        digest.update(located.scores[topic].float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
