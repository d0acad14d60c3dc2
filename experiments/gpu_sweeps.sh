#!/bin/bash
# Sweeps on one lent GPU, several runs at once, each the sweep file's own train.py command
# (`wtfree.sweep --dry_run`); the runs do not depend on each other. Run from the repository root
# on the device machine (the `device` tool of this workplace), with the wheels wtfree needs beyond
# that machine's image in .whl/ and the IDX files in .devdata/{fashion-mnist,mnist}/ (MNIST's
# written from wtfree's offline copy).
#
# SWEEPS: one sweep a line, "<name> <sweep file> <regex of run names> [extra train.py flags]",
# run in that order by one pool of JOBS processes. The default is the 2026-12-04 first call's: the
# ViT table and the settling rules on MNIST (then with 5 and 4 jobs in two pools).
# At DEADLINE seconds after the start the pool stops and each unfinished run gets SIGTERM, on
# which train.py checkpoints and exits; calling the script again on the same machine resumes them
# (runs that exited 0 are skipped). $OUT gets runs.tgz (metrics, configs and logs, refreshed every
# minute) and ckpt.tar.part-* (the latest checkpoint of each unfinished run, 15 MiB parts:
# `cat ckpt.tar.part-* | tar x` restores them, to resume on another machine).
# SMOKE=0 skips the ViT's 20-step smoke test, BENCH=0 the converted-ResNet-20 benchmark on the
# quiet GPU, MPS=1 tries CUDA MPS (kept only if a JAX process then starts within 60 s).
# The wheels used on 2026-12-04 (cp312 where binary): ml-collections 1.1.0, tensorflow-datasets
# 4.9.10, tensorflow-metadata, promise, toml, termcolor, immutabledict, simple-parsing,
# docstring-parser, dm-tree, array-record, nest-asyncio, tensorboardX, importlib-resources,
# protobuf 7.36.2. Not flax, optax or orbax: the image's match its jax (0.11.2), and flax 0.12.8
# does not import under it (jax.experimental.hijax has no HiPrimitive).
set -u
T0=$(date +%s)
DEADLINE=${DEADLINE:-545}
JOBS=${JOBS:-9}
OUT=${OUT:-/tmp/out}
SWEEPS=${SWEEPS:-"vit configs/sweeps/fashion_mnist_vit_rules.py .
settling configs/sweeps/settling_mnist.py . --config.idx_dir=/tmp/data/mnist"}
mkdir -p "$OUT"
elapsed() { echo $(($(date +%s) - T0)); }

PY=${PY:-python3}
if [ ! -d /tmp/site ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
mkdir -p /usr/share/datasets /tmp/data
cp -r .devdata/fashion-mnist /usr/share/datasets/ && cp -r .devdata/mnist /tmp/data/ || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.used,utilization.gpu --format=csv,noheader
if [ "${MPS:-0}" = 1 ] && ! pgrep -f "^nvidia-cuda-mps-control" >/dev/null; then
    nvidia-cuda-mps-control -d && echo "MPS daemon started"
    if ! timeout 60 $PY -c "import jax; print(jax.numpy.ones(3).sum())"; then
        echo quit | nvidia-cuda-mps-control
        echo "MPS: a JAX process did not start under it; stopped"
    fi
fi
$PY -c "import sys, jax, flax, optax, orbax.checkpoint as o; print(sys.version.split()[0], \
'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

if [ "${SMOKE:-1}" = 1 ]; then
    echo "== smoke: 20 steps of the ViT under wm ($(elapsed) s)"
    if ! timeout 150 $PY train.py --config=configs/fashion_mnist_vit.py:rule=wm,runlocal=True \
        --config.idx_dir=/usr/share/datasets/fashion-mnist --workdir=/tmp/smoke >/tmp/smoke.log 2>&1; then
        tail -40 /tmp/smoke.log
        exit 1
    fi
    tail -2 /tmp/smoke.log
fi
if [ "${BENCH:-1}" = 1 ]; then
    echo "== converted ResNet-20 against native, quiet GPU ($(elapsed) s)"
    timeout 150 $PY benchmarks/convert_resnet20.py --rules=bp,fa,kp --batch_size=128 \
        --steps=50 --repeats=7 >"$OUT/convert_resnet20.txt" 2>&1
    tail -8 "$OUT/convert_resnet20.txt"
fi

R=/tmp/runs
mkdir -p $R/logs
touch $R/done
# Each line: the run's command, its output appended to logs/<sweep>_<run>.log, then its exit
# status appended to $R/done; runs that exited 0 before are left out.
commands() {  # name, sweep file, regex of run names, extra flags
    local name=$1 file=$2 regex=$3
    shift 3
    $PY -m wtfree.sweep "$file" --workdir "$R/$name" --dry_run | while read -r line; do
        run=${line##*--workdir=$R/$name/}
        run=${run%% *}
        [[ $run =~ $regex ]] || continue
        grep -qx "exit 0 $name/$run" $R/done && continue
        echo "$line $* >>$R/logs/${name}_$run.log 2>&1; echo \"exit \$? $name/$run\" >>$R/done"
    done
}
: >$R/pool.cmds
while read -r sweep; do
    [ -n "$sweep" ] && commands $sweep >>$R/pool.cmds
done <<<"$SWEEPS"
echo "== $(wc -l <$R/pool.cmds) runs, $JOBS at a time ($(elapsed) s)"
(xargs -P "$JOBS" -d '\n' -I{} bash -c '{}' <$R/pool.cmds) &
POOL=$!
pack() {
    tar czf "$OUT/runs.tmp.tgz" --exclude=checkpoints --exclude=tensorboard -C /tmp runs &&
        mv "$OUT/runs.tmp.tgz" "$OUT/runs.tgz"
}
while kill -0 $POOL 2>/dev/null && [ "$(elapsed)" -lt "$DEADLINE" ]; do
    sleep 5
    if [ $(($(elapsed) % 60)) -lt 5 ]; then
        echo "t=$(elapsed)s exited: $(wc -l <$R/done), $(nvidia-smi \
            --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
        pack
    fi
done
echo "== stopping at $(elapsed) s"
pkill -9 xargs 2>/dev/null
pkill -TERM -f "python.*train\.py" 2>/dev/null
for _ in $(seq 40); do pgrep -f "python.*train\.py" >/dev/null || break; sleep 1; done
pkill -9 -f "python.*train\.py" 2>/dev/null
echo "== stopped at $(elapsed) s"
pack
rm -f "$OUT"/ckpt.tar.part-*
latest=()
for ckpts in $R/*/*/checkpoints; do
    run=${ckpts%/checkpoints}
    grep -qx "exit 0 $(basename "$(dirname "$run")")/$(basename "$run")" $R/done && continue
    step=$(ls "$ckpts" | grep -x '[0-9]*' | sort -n | tail -1)
    [ -n "$step" ] && latest+=("${ckpts#/tmp/}/$step")
done
[ ${#latest[@]} -gt 0 ] && tar cf - -C /tmp "${latest[@]}" | split -b 15M - "$OUT/ckpt.tar.part-"
ls -la "$OUT"
$PY - "$R" <<'PYEOF'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
for d in sorted(p for p in root.glob("*/*") if (p / "config.json").exists()):
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (d / "metrics.jsonl").exists() else []
    acc = [r for r in rows if "test/accuracy" in r]
    last = acc[-1] if acc else {}
    print(f"{d.parent.name}/{d.name}: epoch {last.get('epoch', 0):.2f} "
          f"test {100 * last.get('test/accuracy', float('nan')):.2f} "
          f"steps {max((r.get('step', 0) for r in rows), default=0)}")
PYEOF
grep -v "^exit 0 " $R/done
