# Shared by the GPU bench recipes (sourced): paths, prompt sets, and `sd`, which runs one
# specdiff command and packs everything so far into $OUT/bench.tar (a call cut off by its time
# limit still returns the finished steps).
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 SPECDIFF_PROFILES=$PWD/out/profiles
R=$PWD/out; mkdir -p "$R" "$OUT"
P="--prompts data/prompts/function_completion.jsonl --prompts data/prompts/file_continuation.jsonl"
L=${LIMIT:-32}
sd() { python3 -m specdiff "$@"; tar -C "$R" -cf "$OUT/bench.tar" .; }
t0=$SECONDS
