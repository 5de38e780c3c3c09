#!/usr/bin/env bash
# `make bench`: every benchmark of benchmarks/README.md, one process at a time (never two at once).
#   bash benchmarks/run.sh [all|trainer|idbounds|flops|peers|quality|din|tables|sparse-quality|contention|serving]
# Environment knobs (defaults are what the README tables used):
#   BENCH_OUT (_build/bench)  results: *.json / *.jsonl, stderr logs, the exported CSVs
#   BENCH_ROWS (250000)       simulator rows exported for the peer comparison (80/10/10 by time)
#   BENCH_REPS (4)            interleaved repetitions of the peer throughput runs
#   BENCH_QUALITY_SEEDS (2024 2025 2026)  one early-stopped quality run per library and seed
#   BENCH_THREADS (2)         torch threads for every library
#   BENCH_DIN_ROWS (250000)   rows of the history world exported for the DIN comparison
#   BENCH_DIN_REPS (3)        interleaved repetitions of the DIN throughput runs
#   OMP_WAIT_POLICY (unset)   left as the caller sets it, the same for every library. On an idle
#                             machine leave it unset (libgomp's spinning default is ~10% faster);
#                             on a shared, oversubscribed one set PASSIVE (README "Machine and load").
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
WHAT="${1:-all}"
PY="$ROOT/.venv/bin/python"
OUT="${BENCH_OUT:-$ROOT/_build/bench}"
ROWS="${BENCH_ROWS:-250000}"
REPS="${BENCH_REPS:-4}"
THREADS="${BENCH_THREADS:-2}"
mkdir -p "$OUT"
want() { [ "$WHAT" = all ] || [ "$WHAT" = "$1" ]; }
log() { echo "[$(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg) OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset}] $*" >&2; }

if want trainer; then
  log "trainer vs model step"
  "$PY" benchmarks/bench_trainer.py --rows 100000 --runs 7 --threads "$THREADS" \
    --out "$OUT/trainer.json" 2>>"$OUT/stderr.log"
fi

if want idbounds; then
  log "id bounds check on vs off (DeepFM steps, interleaved)"
  "$PY" benchmarks/bench_id_bounds.py --rows 100000 --steps 400 --threads "$THREADS" \
    --out "$OUT/id_bounds.json" 2>>"$OUT/stderr.log"
fi

if want flops; then
  rm -f "$OUT/flops.jsonl"
  for precision in fp32 bf16; do
    log "FLOP rate vs GEMM rate ($precision)"
    "$PY" benchmarks/bench_flops.py --precision "$precision" --threads "$THREADS" --blocks 5 --steps 5 \
      --out "$OUT/flops.jsonl" 2>>"$OUT/stderr.log"
  done
fi

if want serving; then  # issue 19: serving latency, eager vs onnxruntime vs torch.compile, one thread
  log "serving latency (B = 1 and 512)"
  "$PY" benchmarks/bench_serving.py --threads 1 --reps 5 --calls 200 --out "$OUT/serving.json" \
    2>>"$OUT/stderr.log" >/dev/null
fi

if want sparse-quality; then  # issue 20: the sparse default vs the dense path, test AUC over 3 seeds
  log "sparse vs dense embedding updates: quality"
  "$PY" benchmarks/bench_sparse_quality.py --datasets world world_no_l2 movielens --seeds 0 1 2 \
    --threads "$THREADS" --out "$OUT/sparse_quality.json" 2>>"$OUT/stderr.log" >/dev/null
fi

if want peers || want quality || want din || want tables; then
  PEERS="$ROOT/benchmarks/peers"
  VPY="$PEERS/.venv-peers/bin/python"
  bash "$PEERS/setup.sh" >>"$OUT/stderr.log" 2>&1 || { echo "peer venv set-up failed, see $OUT/stderr.log" >&2; exit 1; }
  DATA="$OUT/data-$ROWS"
  [ -f "$DATA/test.csv" ] || "$PY" "$PEERS/export_data.py" --rows "$ROWS" --out "$DATA" >/dev/null
  FX_WORK="$OUT/fuxictr-work-$ROWS"  # FuxiCTR's processed data: built on its first run, then reused
  ARGS=(--data "$DATA" --batch 4096 --emb 10 --mlp 400,400,400 --lr 1e-3 --dropout 0.2 --emb-reg 0.05
        --threads "$THREADS" --seed 2024)
  run() {  # run FILE LABEL PYTHON SCRIPT [extra args]
    local file="$1" label="$2" py="$3" script="$4"; shift 4
    log "$label $*"
    "$py" "$PEERS/$script" "${ARGS[@]}" "$@" 2>>"$OUT/stderr.log" | tail -1 | tee -a "$OUT/$file"
  }
  ctrlib()      { run "$1" ctrlib "$PY" run_ctrlib.py "${@:2}"; }
  ctrlib_bf16() { run "$1" ctrlib-bf16 "$PY" run_ctrlib.py --precision bf16 "${@:2}"; }
  deepctr()     { run "$1" deepctr-torch "$VPY" run_deepctr.py "${@:2}"; }
  fuxictr()     { run "$1" fuxictr "$VPY" run_fuxictr.py --loader npz --workdir "$FX_WORK" "${@:2}"; }

  if want peers; then  # 2 epochs per run (the second is the steady state), order reversed every other rep
    rm -f "$OUT/throughput.jsonl"
    for rep in $(seq "$REPS"); do
      order=(ctrlib deepctr fuxictr ctrlib_bf16)
      [ $((rep % 2)) = 0 ] && order=(ctrlib_bf16 fuxictr deepctr ctrlib)
      for lib in "${order[@]}"; do "$lib" throughput.jsonl --epochs 2 --patience 9; done
    done
  fi
  if want quality; then  # early stopping on validation AUC (patience 2), up to 100 epochs, one run per seed
    rm -f "$OUT/quality.jsonl"
    for seed in ${BENCH_QUALITY_SEEDS:-2024 2025 2026}; do
      ctrlib quality.jsonl --epochs 100 --seed "$seed"
      fuxictr quality.jsonl --epochs 100 --seed "$seed"
      ctrlib_bf16 quality.jsonl --epochs 100 --seed "$seed"
      [ -n "${BENCH_DEEPCTR_QUALITY:-}" ] && deepctr quality.jsonl --epochs 100 --seed "$seed"
    done
  fi
  if want tables; then  # issue 20: throughput and peak memory vs table rows, 4 arms interleaved
    rm -f "$OUT/tables.jsonl"
    log "throughput vs embedding-table rows"
    "$PY" benchmarks/bench_tables.py --reps "${BENCH_TABLE_REPS:-3}" --epochs 4 --samples 40960 --threads "$THREADS" \
      --peers-python "$VPY" --out "$OUT/tables.jsonl" 2>>"$OUT/stderr.log"
    "$PY" benchmarks/bench_row_grads.py --threads "$THREADS" >"$OUT/row_grads.json" 2>>"$OUT/stderr.log"
  fi
  if want din; then  # DIN, history length 50: throughput (2 epochs, interleaved), then early-stopped quality
    DIN_DATA="$OUT/din-${BENCH_DIN_ROWS:-250000}"
    [ -f "$DIN_DATA/test.npz" ] || "$PY" "$PEERS/export_data.py" --rows "${BENCH_DIN_ROWS:-250000}" --history 50 \
      --out "$DIN_DATA" >/dev/null
    ARGS=(--data "$DIN_DATA" --threads "$THREADS" --seed 2024)  # the DIN defaults of common.din_parser
    ctrlib_din()  { run "$1" ctrlib-din "$PY" run_ctrlib_din.py "${@:2}"; }
    deepctr_din() { run "$1" deepctr-torch-din "$VPY" run_deepctr_din.py "${@:2}"; }
    rm -f "$OUT/din.jsonl"
    for rep in $(seq "${BENCH_DIN_REPS:-3}"); do
      order=(ctrlib_din deepctr_din)
      [ $((rep % 2)) = 0 ] && order=(deepctr_din ctrlib_din)
      for lib in "${order[@]}"; do "$lib" din.jsonl --epochs 2 --patience 9; done
    done
    rm -f "$OUT/din-quality.jsonl"
    ctrlib_din din-quality.jsonl --epochs 30
    deepctr_din din-quality.jsonl --epochs 30
  fi
fi

if want contention; then  # issue 21: a chapter (QUICK) alone and beside one busy process, before/after
  log "chapter execution alone and beside one competing process, OpenMP default vs build_book's"
  "$PY" benchmarks/bench_contention.py --chapter "${BENCH_CONTENTION_CHAPTER:-01_ctr_world}" \
    --repeats "${BENCH_CONTENTION_REPS:-3}" --out "$OUT/contention.jsonl" 2>>"$OUT/contention.log"
fi

"$PY" benchmarks/summarize.py "$OUT"
