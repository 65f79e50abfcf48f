"""An elastic pool's file: which worker jobs the scaler submits, with which ``sbatch`` options, within
which limits. Role ``pegasus_worker`` is to write it (``pegasus_worker_scaling: elastic``); ``han-worker
scale`` reads it.

Every key but ``job_name``, ``queues`` and ``script`` is optional; unknown keys are refused (typos)::

    {"job_name": "han-pose-workers", "queues": ["pose"], "script": "~/.han/worker/worker.sbatch",
     "sbatch": {"partition": "RTXA6000", "time": "1-00:00:00", "gres": "gpu:1", "cpus_per_task": 4,
                "mem": "16G", "signal": "B:TERM@300", "output": "~/.han/worker/logs/slurm-%j.out",
                "chdir": "~/.han/worker"},
     "slurm_bin_dir": "", "tick_seconds": 5,
     "limits": {"max_workers": 4, "min_workers": 0, "max_pending": 1, "horizon_seconds": 60,
                "max_failed_submissions": 10, "max_failed_starts": 3}}

Worker jobs are submitted with ``--export=NONE`` and nothing secret in their arguments: the script runs
``han-worker run`` with a config file, which reads its credentials from 0600 files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from han_worker.fields import FieldReader
from han_worker.private_files import TrustedFileError, read_trusted_json
from han_worker.scaling.policy import Limits, LimitsError
from han_worker.scaling.snapshot import Pool
from han_worker.slurm import parse_gres, parse_walltime

SBATCH_OPTIONS = ("partition", "time", "gres", "cpus_per_task", "mem", "signal", "output", "chdir")
_TOP_KEYS = frozenset({"job_name", "queues", "script", "sbatch", "slurm_bin_dir", "tick_seconds", "limits"})
_LIMIT_KEYS = ("max_workers", "min_workers", "max_pending", "max_failed_submissions", "max_failed_starts")


class PoolFileError(ValueError):
    """The pool's file cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class PoolSettings:
    pool: Pool
    script: Path
    sbatch: dict[str, str]  # option (as in SBATCH_OPTIONS) -> value; absent options are not passed
    slurm_bin_dir: str
    tick_seconds: float
    limits: Limits
    origin: str

    def sbatch_argv(self) -> list[str]:
        """``sbatch`` for one worker job of the pool: its name, options, no exported environment."""
        program = self.slurm_program("sbatch")
        options = [f"--{name.replace('_', '-')}={value}" for name, value in self.sbatch.items()]
        return [program, "--parsable", f"--job-name={self.pool.job_name}", *options, "--export=NONE",
                str(self.script)]  # fmt: skip

    def slurm_program(self, name: str) -> str:
        return str(Path(self.slurm_bin_dir, name)) if self.slurm_bin_dir else name

    @property
    def gpus_per_job(self) -> int:
        """GPUs each worker job asks for (its ``gres`` items named gpu; checked when the file was read)."""
        gres = self.sbatch.get("gres")
        return sum(item.amount for item in parse_gres(gres) if item.name == "gpu") if gres else 0


def load_pool_file(path: Path) -> PoolSettings:
    try:
        data = read_trusted_json(path)
    except TrustedFileError as exc:
        raise PoolFileError(str(exc)) from exc
    return parse_pool(data, str(path))


def parse_pool(data: dict[str, object], origin: str) -> PoolSettings:
    fields = FieldReader(data, origin, PoolFileError)
    _refuse_unknown(fields, _TOP_KEYS)
    job_name = _name(fields)
    queues = fields.data.get("queues")
    if not isinstance(queues, list) or not queues or not all(isinstance(q, str) and q for q in queues):
        fields.fail("queues", " must be a non-empty list of queue names")
    script = Path(fields.string("script")).expanduser()
    if not script.is_absolute():
        fields.fail("script", f": {script} is not an absolute path")
    sbatch = _sbatch(fields)
    return PoolSettings(
        pool=Pool(job_name, tuple(dict.fromkeys(queues))),
        script=script,
        sbatch=sbatch,
        slurm_bin_dir=fields.string("slurm_bin_dir") if fields.data.get("slurm_bin_dir") else "",
        tick_seconds=fields.seconds("tick_seconds", 5.0, 0.5, 300.0),
        limits=_limits(fields, parse_walltime(sbatch["time"]) if "time" in sbatch else None),
        origin=origin,
    )


def _name(fields: FieldReader) -> str:
    name = fields.string("job_name")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or not name.isascii():
        fields.fail("job_name", f": {name!r} may hold letters, digits, '-', '_' and '.' only")
    return name


def _sbatch(fields: FieldReader) -> dict[str, str]:
    if "sbatch" not in fields.data:
        return {}
    options = fields.child("sbatch")
    _refuse_unknown(options, frozenset(SBATCH_OPTIONS))
    chosen: dict[str, str] = {}
    for name in SBATCH_OPTIONS:
        if name not in options.data:
            continue
        if name == "cpus_per_task":
            chosen[name] = str(options.integer(name, 1, 10_000))
            continue
        value = options.string(name)
        if any(character in value for character in "\n\r\0"):
            options.fail(name, " must be one line")
        if name in ("output", "chdir"):
            value = str(Path(value).expanduser())
        try:
            if name == "time":
                parse_walltime(value)
            elif name == "gres":
                parse_gres(value)
        except ValueError as exc:
            options.fail(name, f": {exc}")
        chosen[name] = value
    return chosen


def _limits(fields: FieldReader, worker_walltime: int | None) -> Limits:
    if "limits" not in fields.data:
        fields.fail("limits", " is missing (at least max_workers)")
    limits = fields.child("limits")
    _refuse_unknown(limits, frozenset({*_LIMIT_KEYS, "horizon_seconds"}))
    given = {key: limits.integer(key, 0, 100_000) for key in _LIMIT_KEYS if key in limits.data}
    if "max_workers" not in given:
        limits.fail("max_workers", " is missing")
    try:
        horizon = limits.seconds("horizon_seconds", 60.0, 1.0)
        return Limits(**given, horizon_seconds=horizon, worker_walltime_seconds=worker_walltime)
    except LimitsError as exc:
        name, problem = str(exc).split(": ", 1)
        raise PoolFileError(f"{fields.origin}: field 'limits.{name}': {problem}") from exc


def _refuse_unknown(fields: FieldReader, known: frozenset[str]) -> None:
    unknown = sorted(set(fields.data) - known)
    if unknown:
        raise PoolFileError(
            f"{fields.origin}: unknown field(s) {', '.join(fields.name(key) for key in unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
