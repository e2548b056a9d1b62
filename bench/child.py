"""Run ONE variant in this (fresh) process: ``python -m bench.child <ctx.json>``.

Writes ``ctx["result_path"]`` (JSON): ``wall_s`` (the timed ``run``), ``startup_s``
(``setup``: cluster/session start, excluded from wall), the variant's facts and this
process's peak RSS (``vmhwm_self``, bytes).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback


def main(ctx_path: str) -> int:
    with open(ctx_path) as f:
        ctx = json.load(f)
    from bench.variants import VARIANTS, module

    mod = module(ctx["variant"])
    ctx["options"] = {**VARIANTS[ctx["variant"]][1], **ctx.get("options", {})}
    result = {"variant": ctx["variant"], "size": ctx["size"], "ok": False}
    # The kernel source is part of the fingerprint: results of different kernels are not comparable.
    from bench.featureset import FEATURE_SET

    result["fingerprint"] = FEATURE_SET.fingerprint
    state = None
    try:
        t0 = time.monotonic()
        state = mod.setup(ctx)
        t1 = time.monotonic()
        print(f"[{ctx['variant']}] setup {t1 - t0:.1f}s; running", flush=True)
        info = mod.run(ctx, state) or {}
        t2 = time.monotonic()
        print(f"[{ctx['variant']}] run {t2 - t1:.1f}s", flush=True)
        result.update(ok=True, startup_s=t1 - t0, wall_s=t2 - t1, info=info)
    except BaseException as exc:  # noqa: BLE001 (reported, not raised: the parent records the failure)
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        if state is not None:
            try:
                mod.teardown(state)
            except Exception:  # noqa: BLE001 (teardown noise must not hide the result)
                traceback.print_exc()
    kib = 1024  # Linux ru_maxrss is in KiB
    from bench.measure import hwm

    result["vmhwm_self"] = hwm(os.getpid())
    # For the record only: inflated by the runner's own peak (inherited through vfork/exec).
    result["ru_maxrss_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib
    result["ru_maxrss_children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib
    tmp = ctx["result_path"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, ctx["result_path"])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
