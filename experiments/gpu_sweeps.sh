#!/bin/bash
# The ViT table's sweep and the settling rules' MNIST sweep on one lent GPU, several runs at once,
# and the converted-ResNet-20 benchmark on the quiet GPU first. Run from the repository root on
# the device machine (the `device` tool of this workplace), with the wheels wtfree needs beyond
# that machine's image in .whl/ and the IDX files in .devdata/{fashion-mnist,mnist}/ (MNIST's
# written from wtfree's offline copy). Each run is the sweep file's own train.py command
# (`wtfree.sweep --dry_run`); the runs do not depend on each other. Training stops at DEADLINE
# seconds after the start (unfinished runs keep what they logged); the metrics and each run's
# output come back in $OUT/runs.tgz, refreshed every 45 s.
# The wheels used on 2026-12-04 (cp312 where binary): ml-collections 1.1.0, tensorflow-datasets
# 4.9.10, tensorflow-metadata, promise, toml, termcolor, immutabledict, simple-parsing,
# docstring-parser, dm-tree, array-record, nest-asyncio, tensorboardX, importlib-resources,
# protobuf 7.36.2. Not flax, optax or orbax: the image's match its jax (0.11.2), and flax 0.12.8
# does not import under it (jax.experimental.hijax has no HiPrimitive).
set -u
T0=$(date +%s)
DEADLINE=${DEADLINE:-545}
VIT_JOBS=${VIT_JOBS:-5}
SETTLING_JOBS=${SETTLING_JOBS:-4}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
elapsed() { echo $(($(date +%s) - T0)); }

PY=${PY:-python3}
if [ -z "${SKIP_INSTALL:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
mkdir -p /usr/share/datasets /tmp/data
cp -r .devdata/fashion-mnist /usr/share/datasets/ && cp -r .devdata/mnist /tmp/data/ || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.used,utilization.gpu --format=csv,noheader
$PY -c "import sys, jax, flax, optax, orbax.checkpoint as o; print(sys.version.split()[0], \
'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

echo "== smoke: 20 steps of the ViT under wm ($(elapsed) s)"
if ! timeout 150 $PY train.py --config=configs/fashion_mnist_vit.py:rule=wm,runlocal=True \
    --config.idx_dir=/usr/share/datasets/fashion-mnist --workdir=/tmp/smoke >/tmp/smoke.log 2>&1; then
    tail -40 /tmp/smoke.log
    exit 1
fi
tail -2 /tmp/smoke.log

echo "== converted ResNet-20 against native, quiet GPU ($(elapsed) s)"
[ -n "${SKIP_BENCH:-}" ] || timeout 150 $PY benchmarks/convert_resnet20.py --rules=bp,fa,kp --batch_size=128 \
    --steps=50 --repeats=7 >"$OUT/convert_resnet20.txt" 2>&1
tail -8 "$OUT/convert_resnet20.txt"

R=/tmp/runs
mkdir -p $R/logs
# Each line: the run's command, its output to logs/<sweep>_<run>.log, then its exit status.
commands() {  # sweep file, sweep name, extra flags
    $PY -m wtfree.sweep "$1" --workdir "$R/$2" --dry_run | while read -r line; do
        name=${line##*--workdir=$R/$2/}
        name=${name%% *}
        echo "$line $3 >$R/logs/$2_$name.log 2>&1; echo \"exit \$? $2/$name \$(date +%s)\""
    done
}
commands configs/sweeps/fashion_mnist_vit_rules.py vit "" >$R/vit.cmds
commands configs/sweeps/settling_mnist.py settling "--config.idx_dir=/tmp/data/mnist" >$R/settling.cmds
wc -l $R/*.cmds
echo "== sweeps: $VIT_JOBS ViT runs and $SETTLING_JOBS settling runs at a time ($(elapsed) s)"
(xargs -P "$VIT_JOBS" -d '\n' -I{} bash -c '{}' <$R/vit.cmds >$R/vit.done) &
POOL1=$!
(xargs -P "$SETTLING_JOBS" -d '\n' -I{} bash -c '{}' <$R/settling.cmds >$R/settling.done) &
POOL2=$!
pack() {
    tar czf "$OUT/runs.tmp.tgz" --exclude=checkpoints --exclude=tensorboard -C /tmp runs &&
        mv "$OUT/runs.tmp.tgz" "$OUT/runs.tgz"
}
while kill -0 $POOL1 2>/dev/null || kill -0 $POOL2 2>/dev/null; do
    [ "$(elapsed)" -ge "$DEADLINE" ] && break
    sleep 15
    if [ $(($(elapsed) % 60)) -lt 15 ]; then
        echo "t=$(elapsed)s done: $(cat $R/*.done | wc -l), $(nvidia-smi \
            --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
        pack
    fi
done
echo "== stopping at $(elapsed) s"
pkill -INT -f "train.py" 2>/dev/null
sleep 5
pkill -9 -f "train.py" 2>/dev/null
pkill -9 xargs 2>/dev/null
pack
$PY - "$R" <<'EOF'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
for sweep in ("vit", "settling"):
    for d in sorted((root / sweep).glob("*")):
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()] \
            if (d / "metrics.jsonl").exists() else []
        acc = [r for r in rows if "test/accuracy" in r]
        last = acc[-1] if acc else {}
        print(f"{sweep}/{d.name}: epoch {last.get('epoch', 0):.2f} "
              f"test {100 * last.get('test/accuracy', float('nan')):.2f} "
              f"steps {max((r.get('step', 0) for r in rows), default=0)}")
EOF
cat $R/*.done | sort -k2 | awk '$2 != 0'
