"""A synthetic knowledge base for fact recall, causal tracing and model editing (``mt.facts``).

Subjects have two-token names (a first name and a last name; every first and last name is shared by many subjects,
so recalling a fact needs both tokens), several relations map each subject to an attribute of that relation's
vocabulary, and each relation is asked by several prompt templates, the last ones held out of training as
paraphrases. Everything is drawn from ``seed``. A prompt is ``[BOS] + prefix + template``, where the prefix is 0 to
``max_prefix`` filler words; the answer is the next token after the last one.

:meth:`KnowledgeBase.edit_records` makes CounterFact-style records (Meng et al. 2022): subject, relation, true
attribute, new attribute, paraphrase prompts (held-out templates) and neighbourhood prompts (other subjects with the
same relation and the same true attribute, those sharing a name token first). :class:`FactTask` is the training
task; :class:`~mi_toolkit.tasks.reversal.ReversalTask` teaches one-to-one facts in one direction only (the reversal
curse, Berglund et al. 2023).

>>> kb = KnowledgeBase(n_first=6, n_last=6, n_subjects=20, n_attributes=5, seed=0)
>>> len(kb.facts), kb.decode(kb.prompt(0, "lives_in").tokens)[:1]
(80, ['<bos>'])
"""

import dataclasses
import functools

import torch
from torch import Tensor

from mi_toolkit.core.losses import answer_loss
from mi_toolkit.core.tl import HookedTransformer

__all__ = ["BOS", "PAD", "RELATIONS", "REVERSE_TEMPLATE", "EditRecord", "FactTask", "KnowledgeBase", "Prompt",
           "answer_logits", "pad_prompts"]

BOS, PAD = 0, 1
"""Token ids: every prompt starts with BOS; batches are right-padded with PAD."""

FIRST_NAMES = ("Ada Alan Alice Anna Ben Carl Clara Dan Dora Eli Emma Eva Finn Gus Hana Ida Ivan Jack Jane Joe Kai Kim "
               "Leo Lily Lou Max May Mia Ned Nina Noah Olga Omar Otto Paul Rosa Ruth Sam Sara Tom Uma Vera Walt Yara "
               "Yuri Zack Zoe Igor Hugo").split()
LAST_NAMES = ("Abbott Baker Banks Berg Black Bloom Brooks Burns Carter Cole Cross Dale Doyle Drake Ellis Ford Frost Gray "
              "Hale Hart Hayes Hill Holt Hunt Keane King Knox Lane Lowe Marsh Moore Nash Novak Park Pike Quinn Reed "
              "Rhodes Ross Shaw Stone Vance Wade Ward Webb West Wolfe Young").split()

RELATIONS: dict[str, dict] = {
    "lives_in": dict(
        attributes="Paris Tokyo Lima Cairo Oslo Rome Delhi Quito Seoul Dakar Hanoi Kyiv Riga Lagos Perth Bern Doha "
                   "Accra Baku Minsk Sofia Tunis Dublin Havana".split(),
        templates=("{s} lives in", "{s} is living in", "the home of {s} is in", "{s} has a house in",
                   "{s} has a home in", "the house of {s} is in")),
    "works_as": dict(
        attributes="doctor pilot baker farmer lawyer nurse chef painter teacher sailor judge miner tailor barber poet "
                   "actor dentist plumber singer welder clerk pharmacist architect butcher".split(),
        templates=("{s} works as a", "the job of {s} is", "{s} is employed as a", "by profession {s} is a",
                   "{s} is by profession a", "the job {s} has is")),
    "speaks": dict(
        attributes="French Japanese Spanish Arabic Norwegian Italian Hindi Quechua Korean Wolof Vietnamese Ukrainian "
                   "Latvian Yoruba English German Greek Twi Azeri Belarusian Bulgarian Berber Irish Catalan".split(),
        templates=("{s} speaks", "the language of {s} is", "{s} is fluent in", "{s} talks in",
                   "{s} speaks the language", "the language {s} speaks is")),
    "plays": dict(
        attributes="piano violin guitar flute drums cello harp trumpet oboe banjo organ sitar tuba viola clarinet "
                   "bassoon lute ukulele harmonica accordion saxophone mandolin xylophone bagpipes".split(),
        templates=("{s} plays the", "the instrument of {s} is the", "{s} is a player of the", "{s} performs on the",
                   "{s} plays music on the", "the instrument {s} plays is the")),
}
"""Each relation's attribute vocabulary and templates; ``{s}`` stands for the two name tokens."""

PREFIX_WORDS = "so well then yes today also and but now here still later indeed anyway okay again".split()
"""Filler words of the random prefixes."""

REVERSE_TEMPLATE = ("the friend of", "is")
""":class:`~mi_toolkit.tasks.reversal.ReversalTask`: ``{s} is the friend of {b}`` is taught; ``the friend of {b} is`` -> first name of ``s``."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt: its tokens (``BOS`` first, no answer) and the positions of the subject's two name tokens."""

    tokens: tuple[int, ...]
    subject_positions: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class EditRecord:
    """A CounterFact-style edit request: change ``relation(subject)`` from ``true`` to ``new`` (attribute tokens)."""

    subject: int
    relation: str
    true: int
    new: int
    prompt: Prompt
    """The edit prompt (the relation's first template)."""
    paraphrases: tuple[Prompt, ...]
    """The same question in the held-out templates."""
    neighbourhood: tuple[Prompt, ...]
    """The edit template for other subjects whose ``relation`` is also ``true``."""
    other_relations: tuple[tuple[Prompt, int], ...]
    """``(prompt, true attribute)`` for the subject's other relations (training templates), to measure bleed."""


@dataclasses.dataclass(frozen=True)
class KnowledgeBase:
    """Subjects (first x last name), relations and their facts, all drawn from ``seed``.

    Args:
        n_first, n_last: how many first and last names (at most 48 each); subjects are distinct pairs.
        n_subjects: number of subjects (at most ``n_first * n_last``).
        relations: names from :data:`RELATIONS`.
        n_attributes: attributes per relation (at most 24); each fact's attribute is uniform over them.
        n_paraphrase: templates per relation held out of training (the last ones; at most 5).
        max_prefix: longest random prefix of filler words.
        prefix_names: probability that a random prefix also holds another name (two tokens), so that the model
            must find the subject among names.
        seed: seeds the subjects and the facts.
    """

    n_first: int = 40
    n_last: int = 40
    n_subjects: int = 600
    relations: tuple[str, ...] = ("lives_in", "works_as", "speaks", "plays")
    n_attributes: int = 24
    n_paraphrase: int = 2
    max_prefix: int = 4
    prefix_names: float = 0.0
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "relations", tuple(self.relations))
        unknown = [r for r in self.relations if r not in RELATIONS]
        if unknown or not self.relations or len(set(self.relations)) != len(self.relations):
            raise ValueError(f"relations must be distinct names from {sorted(RELATIONS)}, got {self.relations}")
        if not (2 <= self.n_first <= len(FIRST_NAMES) and 2 <= self.n_last <= len(LAST_NAMES)):
            raise ValueError(f"n_first and n_last must lie in [2, 48], got {self.n_first}, {self.n_last}")
        if not 2 <= self.n_subjects <= self.n_first * self.n_last:
            raise ValueError(f"n_subjects must lie in [2, n_first * n_last], got {self.n_subjects}")
        if not 2 <= self.n_attributes <= 24 or not 1 <= self.n_paraphrase <= 5 or not 0 <= self.max_prefix <= 16:
            raise ValueError("need 2 <= n_attributes <= 24, 1 <= n_paraphrase <= 5 and 0 <= max_prefix <= 16")

    # --- vocabulary ---
    @functools.cached_property
    def words(self) -> tuple[str, ...]:
        """Every token's text, by id: specials, filler and template words, names, attributes."""
        template_words = sorted({w for r in self.relations for t in RELATIONS[r]["templates"] for w in t.split()
                                 if w != "{s}"} | set(" ".join(REVERSE_TEMPLATE).split()))
        attributes = [a for r in self.relations for a in RELATIONS[r]["attributes"][: self.n_attributes]]
        words = ("<bos>", "<pad>", *PREFIX_WORDS, *template_words, *FIRST_NAMES[: self.n_first],
                 *LAST_NAMES[: self.n_last], *attributes)
        assert len(set(words)) == len(words), "a word is used twice in the vocabulary"
        return words

    @functools.cached_property
    def ids(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    @property
    def d_vocab(self) -> int:
        return len(self.words)

    @property
    def n_ctx(self) -> int:
        """The longest prompt plus its answer: BOS, prefix, template (the two-token subject)."""
        longest = max(len(t.split()) + 1 for r in self.relations for t in RELATIONS[r]["templates"])
        return 1 + self.max_prefix + 2 * (self.prefix_names > 0) + max(longest, len(" ".join(REVERSE_TEMPLATE).split()) + 3) + 1

    def decode(self, tokens) -> list[str]:
        return [self.words[int(t)] for t in tokens]

    def first_tokens(self) -> Tensor:
        return torch.tensor([self.ids[n] for n in FIRST_NAMES[: self.n_first]])

    def name_tokens(self) -> Tensor:
        """All first- and last-name token ids (the embeddings causal tracing noises)."""
        return torch.tensor([self.ids[n] for n in FIRST_NAMES[: self.n_first] + LAST_NAMES[: self.n_last]])

    def attribute_tokens(self, relation: str) -> Tensor:
        self._check_relation(relation)
        return torch.tensor([self.ids[a] for a in RELATIONS[relation]["attributes"][: self.n_attributes]])

    # --- subjects and facts ---
    @functools.cached_property
    def subjects(self) -> tuple[tuple[int, int], ...]:
        """``(first token, last token)`` of every subject, distinct pairs drawn from ``seed``."""
        gen = torch.Generator().manual_seed(self.seed)
        pairs = torch.randperm(self.n_first * self.n_last, generator=gen)[: self.n_subjects]
        first0, last0 = self.ids[FIRST_NAMES[0]], self.ids[LAST_NAMES[0]]
        return tuple((first0 + int(p) // self.n_last, last0 + int(p) % self.n_last) for p in pairs)

    @functools.cached_property
    def table(self) -> dict[str, Tensor]:
        """``table[relation][subject]``: the true attribute token of each subject."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        return {r: self.attribute_tokens(r)[torch.randint(self.n_attributes, (self.n_subjects,), generator=gen)]
                for r in self.relations}

    @property
    def facts(self) -> list[tuple[int, str, int]]:
        """Every fact as ``(subject, relation, attribute token)``."""
        return [(s, r, int(self.table[r][s])) for r in self.relations for s in range(self.n_subjects)]

    def templates(self, relation: str, split: str = "train") -> tuple[str, ...]:
        """The relation's ``"train"`` templates or its held-out ``"paraphrase"`` ones."""
        self._check_relation(relation)
        all_templates = RELATIONS[relation]["templates"]
        if split not in ("train", "paraphrase"):
            raise ValueError(f"split must be 'train' or 'paraphrase', got {split!r}")
        cut = len(all_templates) - self.n_paraphrase
        return all_templates[:cut] if split == "train" else all_templates[cut:]

    def prompt(self, subject: int, relation: str, template: str | None = None, prefix: tuple[int, ...] = ()) -> Prompt:
        """The prompt asking ``relation`` of ``subject`` (default: the first training template), after ``prefix``."""
        self._check_relation(relation)
        if not 0 <= subject < self.n_subjects:
            raise ValueError(f"subject {subject} is not in the knowledge base (0 .. {self.n_subjects - 1})")
        template = self.templates(relation)[0] if template is None else template
        tokens, where = [BOS, *prefix], None
        for word in template.split():
            if word == "{s}":
                where = (len(tokens), len(tokens) + 1)
                tokens += self.subjects[subject]
            else:
                tokens.append(self.ids[word])
        return Prompt(tuple(tokens), where)

    def random_prefix(self, gen: torch.Generator) -> tuple[int, ...]:
        """0 to ``max_prefix`` filler words, with a random other name (two tokens) among them with probability
        ``prefix_names``."""
        length = int(torch.randint(self.max_prefix + 1, (), generator=gen))
        words = [self.ids[PREFIX_WORDS[int(i)]] for i in torch.randint(len(PREFIX_WORDS), (length,), generator=gen)]
        if float(torch.rand((), generator=gen)) < self.prefix_names:
            first, last = self.name_tokens()[: self.n_first], self.name_tokens()[self.n_first :]
            name = [int(first[torch.randint(self.n_first, (), generator=gen)]),
                    int(last[torch.randint(self.n_last, (), generator=gen)])]
            at = int(torch.randint(length + 1, (), generator=gen))
            words[at:at] = name
        return tuple(words)

    def subject_by_name(self, first: str, last: str) -> int:
        """The subject called ``first last``; ``ValueError`` if there is none."""
        pair = (self.ids.get(first), self.ids.get(last))
        if pair not in self.subjects:
            raise ValueError(f"no subject named {first} {last} in the knowledge base")
        return self.subjects.index(pair)

    def _check_relation(self, relation: str) -> None:
        if relation not in self.relations:
            raise ValueError(f"unknown relation {relation!r}; this knowledge base has {self.relations}")

    # --- CounterFact-style edit records ---
    def edit_records(self, n: int, *, relation: str | None = None, n_neighbours: int = 5, seed: int = 0
                     ) -> list[EditRecord]:
        """``n`` edit requests on distinct facts (of ``relation``, or any), each with a new attribute ``!= true``.

        Args:
            n: number of records (at most the number of facts).
            relation: only this relation's facts (default all).
            n_neighbours: neighbourhood prompts per record (other subjects, same relation and true attribute;
                those sharing a first or last name with the subject first).
            seed: seeds the choice of facts and new attributes.
        """
        relations = self.relations if relation is None else (relation,)
        if relation is not None:
            self._check_relation(relation)
        pool = [(s, r) for r in relations for s in range(self.n_subjects)]
        if not 1 <= n <= len(pool):
            raise ValueError(f"n must lie in [1, {len(pool)}], got {n}")
        gen = torch.Generator().manual_seed(seed)
        records = []
        for i in torch.randperm(len(pool), generator=gen)[:n].tolist():
            s, r = pool[i]
            true = int(self.table[r][s])
            others = self.attribute_tokens(r)[self.attribute_tokens(r) != true]
            new = int(others[torch.randint(len(others), (), generator=gen)])
            same = [t for t in (self.table[r] == true).nonzero().flatten().tolist() if t != s]
            shares = lambda t: bool(set(self.subjects[t]) & set(self.subjects[s]))  # noqa: E731
            neighbours = sorted(same, key=lambda t: (not shares(t), t))[:n_neighbours]
            records.append(EditRecord(
                s, r, true, new, self.prompt(s, r),
                tuple(self.prompt(s, r, t) for t in self.templates(r, "paraphrase")),
                tuple(self.prompt(t, r) for t in neighbours),
                tuple((self.prompt(s, o, t), int(self.table[o][s])) for o in self.relations if o != r
                      for t in self.templates(o))))
        return records


def pad_prompts(prompts, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Right-pad prompts (``Prompt``s or token tuples) with PAD: ``(tokens [n, pos], last position [n])``."""
    rows = [p.tokens if isinstance(p, Prompt) else tuple(p) for p in prompts]
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
    return tokens.to(device), torch.tensor([len(r) - 1 for r in rows], device=device)


def answer_logits(model: HookedTransformer, prompts, *, batch_size: int = 2048) -> Tensor:
    """The logits ``[n, d_vocab_out]`` at each prompt's last position (in batches of ``batch_size``)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens, last = pad_prompts(prompts[i : i + batch_size], model.cfg.device)
        out.append(model(tokens)[torch.arange(len(last)), last])
    return torch.cat(out)


@dataclasses.dataclass(frozen=True)
class FactTask:
    """Learn every fact of ``kb`` from its training templates after random prefixes (the trainer's protocol).

    Args:
        kb: the knowledge base.
        batch_size: prompts per step; each is a uniform fact, training template and prefix.
        seed: seeds the batches (batch ``s`` depends on ``seed`` and ``s`` only).
    """

    kb: KnowledgeBase = dataclasses.field(default_factory=KnowledgeBase)
    batch_size: int = 256
    seed: int = 0
    device: str | torch.device = "cpu"

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def check_model(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if ``model`` cannot read this knowledge base's prompts."""
        if model.cfg.d_vocab < self.kb.d_vocab or model.cfg.n_ctx < self.kb.n_ctx:
            raise ValueError(f"model (d_vocab={model.cfg.d_vocab}, n_ctx={model.cfg.n_ctx}) does not fit the "
                             f"knowledge base: needs d_vocab >= {self.kb.d_vocab} and n_ctx >= {self.kb.n_ctx}")

    def eval_prompts(self, split: str = "train") -> tuple[list[Prompt], Tensor]:
        """Every fact in every template of ``split`` without prefix: ``(prompts, answers)``."""
        return self._eval_prompts[split]

    @functools.cached_property
    def _eval_prompts(self) -> dict[str, tuple[list[Prompt], Tensor]]:
        kb, out = self.kb, {}
        for split in ("train", "paraphrase"):
            pairs = [(kb.prompt(s, r, t), a) for s, r, a in kb.facts for t in kb.templates(r, split)]
            out[split] = [p for p, _ in pairs], torch.tensor([a for _, a in pairs], device=self.device)
        return out

    def train_batch(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(tokens [batch, pos], answer position [batch], answer [batch])``."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        kb, facts = self.kb, self.kb.facts
        prompts, answers = [], []
        for f in torch.randint(len(facts), (self.batch_size,), generator=gen).tolist():
            s, r, a = facts[f]
            templates = kb.templates(r)
            template = templates[int(torch.randint(len(templates), (), generator=gen))]
            prompts.append(kb.prompt(s, r, template, kb.random_prefix(gen)))
            answers.append(a)
        tokens, last = pad_prompts(prompts, self.device)
        return tokens, last, torch.tensor(answers, device=self.device)

    def loss(self, model: HookedTransformer, batch) -> Tensor:
        tokens, last, answers = batch
        logits = model(tokens)[torch.arange(len(last), device=last.device), last]
        return answer_loss(logits, answers)

    @torch.no_grad()
    def evaluate(self, model: HookedTransformer) -> dict[str, float]:
        """Recall (top-1 accuracy) on the training templates and on the held-out paraphrase templates."""
        out = {}
        for split, name in (("train", "recall"), ("paraphrase", "paraphrase_recall")):
            prompts, answers = self.eval_prompts(split)
            logits = answer_logits(model, prompts)
            out[name] = (logits.argmax(-1) == answers).float().mean().item()
            if split == "train":
                out["eval_loss"] = answer_loss(logits, answers).item()
        return out
