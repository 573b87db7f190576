DEADLINE=${DEADLINE:-420}
source scripts/gpu_call.sh
G="--device cuda --dtype bfloat16 --engine graph"
timeout 80 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_fused_forward.py -rfE \
  -k "swiglu or decode_gemm or dependently or streamed or bf16" 2>&1 | grep -v "it/s" | tail -8 | tee out/gputests.txt
pk tests
timeout "$(left 120)" python3 scripts/gpu_forward_ab.py --shape qwen3-1.7b --nodes 1,16,65 --turns 3 \
  --variant gate_up16_streamed specdiff.kernels.gemm.STREAM_SETTINGS=@.pack/gate_up16.txt 2>&1 | grep -v "it/s" \
  | tee out/ab_1.7b_gate_up16.txt
pk ab
timeout "$(left 90)" python3 -m specdiff speed --shape qwen3-8b $G --budgets 64,256 2>&1 | grep -v "it/s" | tee out/speed_8b.txt
pk "speed 8b"
timeout "$(left 60)" python3 -m specdiff speed --shape qwen3-1.7b $G --budgets 64 2>&1 | grep -v "it/s" | tee out/speed_1.7b.txt
pk "speed 1.7b"
timeout "$(left 60)" python3 -m specdiff bench $G --prompts data/prompts/function_completion.jsonl --temperature 0 \
  --limit 24 --methods ar,ddtree --budgets 16,64 --out out/bundled 2>&1 | grep -v "it/s" | tail -8 | tee out/bundled.txt
pk bundled
