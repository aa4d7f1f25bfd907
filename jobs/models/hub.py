"""Hub ids at job start: found in the local cache, or the hub asked once, with a short timeout;
ModelScope ids (`ms://ORG/NAME`) turned into their snapshot folder (`modelscope_models`).

Why not leave it to `from_pretrained`: without internet access (the normal case on a PAI node),
transformers retries each file five times with backoff and fails a minute later with a traceback
in every process. One question to the hub tells in seconds whether the id exists and can be fetched.
"""

from __future__ import annotations

from pathlib import Path

from pai_distil.core import hub_ids
from pai_distil.core.model_refs import HUB_ID

from pai_distil.core.contract import JobError

TIMEOUT_S = 10


def load_kwargs(spec: str) -> dict:
    """Extra `from_pretrained` arguments for `spec` (`local_files_only` when only the cache can serve it);
    raises JobError (one line) when the model cannot be had."""
    if Path(spec).is_dir():
        return {}
    if not HUB_ID.match(spec):  # a path (configs are checked on the client; this job runs elsewhere)
        raise JobError(f"no checkpoint directory at {spec!r} where this job runs; check the path (a local "
                       "directory is seen by --backend process jobs only; evaluate also takes it as an input)")
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    cached = isinstance(try_to_load_from_cache(spec, "config.json"), str)
    unreachable = (f"model {spec!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub "
                   "({where}) cannot be reached; pass a local checkpoint directory, download it into the cache "
                   "first, or set HF_ENDPOINT to a mirror")
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {"local_files_only": True}
        raise JobError(unreachable.format(where="HF_HUB_OFFLINE is set"))
    try:
        model_info(spec, timeout=TIMEOUT_S)
    except RepositoryNotFoundError:
        raise JobError(f"the hub has no model {spec!r} (or it is private: set HF_TOKEN); check the model id") from None
    except Exception:  # noqa: BLE001 - no connection comes in many kinds (DNS, proxy, TLS, timeout); all mean the same
        if cached:
            return {"local_files_only": True}
        raise JobError(unreachable.format(where=constants.ENDPOINT)) from None
    return {}


def modelscope_models(config: dict, log=print) -> dict:
    """`config` with every `model: ms://ORG/NAME` replaced by the model's folder in the ModelScope cache
    (MODELSCOPE_CACHE; downloaded there when missing): one place at job start, so every loader (transformers,
    vLLM) reads a local checkpoint. Raises JobError (one line) for a model that cannot be had."""
    if isinstance(config, list):
        return [modelscope_models(v, log) for v in config]
    if not isinstance(config, dict):
        return config
    out = {}
    for k, v in config.items():
        if k == "model" and isinstance(v, str) and v.startswith("ms://"):
            try:
                out[k] = str(hub_ids.modelscope_snapshot(hub_ids.parse(v, split=False), "model"))
            except ValueError as e:
                raise JobError(str(e)) from None
            log(f"model {v}: {out[k]}")
        else:
            out[k] = modelscope_models(v, log)
    return out
