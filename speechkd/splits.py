"""Speaker-disjoint splits: no speaker's voice on both sides of a train/test line.

A student evaluated on speakers it trained on (even on other sentences) measures memorised voices, not
generalisation. `make_speaker_split` assigns whole speakers to splits, stratified by a speaker attribute
(children and adults in every split, say), reproducibly under a seed; `check_speaker_split` refuses a split file
that names unknown speakers or leaves speakers out, and `check_disjoint` refuses any set of splits, however it
was made, in which a speaker crosses sides.

A split file is JSON: {"corpus": ..., "seed": ..., "stratify": ..., "splits": {"train": [speaker ids], ...}}.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from speechkd.data import DataError, Utterance
from speechkd.io import atomic_write_json

CHILD_MAX_AGE = 12  # speechocean762's children are 5-12, its adults 15 and older


def age_group(utt: Utterance) -> str:
    """The default stratum: "child" (age <= 12) or "adult", from the manifest's `age` column."""
    age = utt.meta.get("age")
    if age is None:
        return "unknown"
    return "child" if int(age) <= CHILD_MAX_AGE else "adult"


STRATA: dict[str, Callable[[Utterance], str]] = {
    "age_group": age_group,
    "gender": lambda u: str(u.meta.get("gender", "unknown")),
    "none": lambda u: "all",
}


@dataclass(frozen=True)
class SplitConfig:
    """`speechkd split`: which share of the speakers goes where."""

    names: tuple[str, ...] = ("train", "dev", "test")  # the splits, in order
    speakers: tuple[int, ...] = ()  # speakers per split (e.g. 85,15,25); () = by `fractions`
    fractions: tuple[float, ...] = (0.7, 0.1, 0.2)  # share of the speakers per split, when `speakers` is ()
    stratify: str = "age_group"  # spread each stratum over every split: age_group (child/adult), gender, none
    seed: int = 0  # the same data, config and seed give the same split

    def validate(self) -> None:
        if len(set(self.names)) != len(self.names) or not self.names:
            raise ValueError(f"names must be distinct and non-empty, got {list(self.names)}")
        if self.speakers and len(self.speakers) != len(self.names):
            raise ValueError(f"speakers has {len(self.speakers)} counts for {len(self.names)} splits")
        if not self.speakers and (len(self.fractions) != len(self.names) or abs(sum(self.fractions) - 1) > 1e-6):
            raise ValueError(f"fractions must have one share per split and sum to 1, got {list(self.fractions)}")
        if self.stratify not in STRATA:
            raise ValueError(f"stratify {self.stratify!r}: choose one of {sorted(STRATA)}")


def speakers_of(utterances: Sequence[Utterance], where: str) -> dict[str, list[Utterance]]:
    """speaker -> utterances; a DataError naming `where` if any utterance has no speaker."""
    out: dict[str, list[Utterance]] = defaultdict(list)
    missing = [u.id for u in utterances if not u.speaker]
    if missing:
        raise DataError(f"{where}: {len(missing)} utterances have no `speaker` (e.g. {missing[:3]}); a speaker split "
                        f"needs a `speaker` column in the manifest (or metadata file)")
    for u in utterances:
        out[str(u.speaker)].append(u)
    return dict(out)


def make_speaker_split(utterances: Sequence[Utterance], cfg: SplitConfig = SplitConfig(), *,
                       where: str = "data") -> dict[str, list[str]]:
    """split name -> sorted speaker ids. Speakers are ordered by a seeded hash within each stratum and dealt out
    stratum by stratum, so every split gets its share of every stratum (largest remainders for the rounding)."""
    cfg.validate()
    by_speaker = speakers_of(utterances, where)
    strata: dict[str, list[str]] = defaultdict(list)
    for spk, utts in by_speaker.items():
        strata[STRATA[cfg.stratify](utts[0])].append(spk)
    total = len(by_speaker)
    wanted = list(cfg.speakers) if cfg.speakers else _round_shares([f * total for f in cfg.fractions], total)
    if sum(wanted) > total:
        raise DataError(f"{where}: {sum(wanted)} speakers asked for ({dict(zip(cfg.names, wanted))}), the data has "
                        f"{total}")
    out: dict[str, list[str]] = {name: [] for name in cfg.names}
    given = [0] * len(cfg.names)
    for stratum in sorted(strata):
        spks = sorted(strata[stratum], key=lambda s: hashlib.sha256(f"{cfg.seed}:{s}".encode()).hexdigest())
        share = _round_shares([w * len(spks) / total for w in wanted], min(len(spks), sum(wanted)))
        start = 0
        for k, name in enumerate(cfg.names):
            n = min(share[k], wanted[k] - given[k])
            out[name] += spks[start:start + n]
            given[k] += n
            start += n
    # Rounding per stratum can leave a split short: top it up from speakers not yet placed, in hash order.
    placed = {s for spks in out.values() for s in spks}
    spare = sorted((s for s in by_speaker if s not in placed),
                   key=lambda s: hashlib.sha256(f"{cfg.seed}:{s}".encode()).hexdigest())
    for k, name in enumerate(cfg.names):
        while given[k] < wanted[k] and spare:
            out[name].append(spare.pop(0))
            given[k] += 1
    return {name: sorted(spks) for name, spks in out.items()}


def _round_shares(shares: list[float], total: int) -> list[int]:
    floors = [int(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: shares[i] - floors[i], reverse=True)
    for i in order[: max(0, total - sum(floors))]:
        floors[i] += 1
    return floors


def check_disjoint(splits: dict[str, Sequence[Utterance]]) -> None:
    """Refuse splits in which a speaker has utterances on more than one side (an utterance-level split)."""
    seen: dict[str, str] = {}
    crossing: dict[str, set[str]] = defaultdict(set)
    for name, utts in splits.items():
        for u in utts:
            if u.speaker is None:
                continue
            first = seen.setdefault(str(u.speaker), name)
            if first != name:
                crossing[str(u.speaker)] |= {first, name}
    if crossing:
        shown = ", ".join(f"{s} in {sorted(v)}" for s, v in list(sorted(crossing.items()))[:5])
        raise DataError(f"{len(crossing)} speakers are on more than one side ({shown}); split by speaker "
                        f"(`speechkd split`), not by utterance, so evaluation measures unseen voices")


def check_speaker_split(utterances: Sequence[Utterance], split: dict[str, Sequence[str]], *,
                        where: str = "split file") -> None:
    """The split must place every speaker of the data exactly once and name no speaker the data lacks."""
    have = set(speakers_of(utterances, "the data"))
    placed: dict[str, str] = {}
    for name, spks in split.items():
        for s in spks:
            if s in placed:
                raise DataError(f"{where}: speaker {s!r} is in both {placed[s]!r} and {name!r}")
            placed[s] = name
    unknown = sorted(set(placed) - have)
    if unknown:
        raise DataError(f"{where}: {len(unknown)} speakers are not in the data (e.g. {unknown[:3]}); is this the split "
                        f"of another corpus? Make one for this data with `speechkd split`")
    left_out = sorted(have - set(placed))
    if left_out:
        raise DataError(f"{where}: {len(left_out)} speakers of the data are in no split (e.g. {left_out[:3]}); add "
                        f"them to one, or make the split again")


def apply_speaker_split(utterances: Sequence[Utterance], split: dict[str, Sequence[str]], *,
                        where: str = "split file") -> dict[str, list[Utterance]]:
    """split name -> that split's utterances, after check_speaker_split."""
    check_speaker_split(utterances, split, where=where)
    side = {s: name for name, spks in split.items() for s in spks}
    out: dict[str, list[Utterance]] = {name: [] for name in split}
    for u in utterances:
        out[side[str(u.speaker)]].append(u)
    check_disjoint(out)
    return out


def save_split(path: str | os.PathLike, split: dict[str, list[str]], **info: Any) -> Path:
    return atomic_write_json(path, {**info, "splits": split})


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        splits = data["splits"]
        if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
            raise TypeError("`splits` must map split names to lists of speaker ids")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{p}: not a speaker split file ({type(e).__name__}: {e}); make one with `speechkd split`") from e
    return {name: [str(s) for s in spks] for name, spks in splits.items()}


def run_split(cfg: SplitConfig, data: str, out_dir: str | os.PathLike, *, split_file: str | None = None) -> dict:
    """`speechkd split`: make (or apply a given) speaker split of `data`; write split.json and one manifest per split."""
    from speechkd.data import open_data
    from speechkd.io import write_jsonl

    utts = open_data(data)
    out = Path(out_dir)
    if split_file:
        split = load_split(split_file)
    else:
        split = make_speaker_split(utts, cfg, where=str(data))
    parts = apply_speaker_split(utts, split, where=str(split_file or data))
    save_split(out / "split.json", split, corpus=str(data), seed=cfg.seed, stratify=cfg.stratify)
    summary = {}
    for name, part in parts.items():
        write_jsonl(out / f"{name}.jsonl", [u.to_record() for u in part])
        strata = defaultdict(int)
        for spk in split[name]:
            strata[STRATA[cfg.stratify](next(u for u in part if u.speaker == spk))] += 1
        summary[name] = {"speakers": len(split[name]), "utterances": len(part),
                         "hours": round(sum(u.duration or 0 for u in part) / 3600, 3), cfg.stratify: dict(strata)}
    return summary
