set -u
rm -rf out; mkdir -p out
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
t0=$SECONDS
left() { l=$(( ${DEADLINE:-540} - (SECONDS - t0) )); [ $l -lt $1 ] && echo $l || echo $1; }
pk() { tar -C out -cf $OUT/out.tar . ; }
nvidia-smi --query-gpu=name --format=csv | tee out/gpu.txt
timeout $(left 150) python3 scripts/gpu_timeline.py --shape qwen3-8b --methods ddtree@64,ddtree@256,ar --compare-padding 2>&1 | grep -v "it/s" | tee out/timeline_8b.txt
pk; echo "timeline $((SECONDS-t0))"
ROWS=65,96,257,320 timeout $(left 150) python3 scripts/gpu_gemm_rows.py 8b --out out/tree_gemm.txt 2>&1 | grep -v "it/s" | tee out/gemm_rows.txt
pk; echo "gemm $((SECONDS-t0))"
timeout $(left 60) python3 -m pytest -q -p no:cacheprovider tests/test_graph_engine.py tests/test_kernels.py -k "once or tree_rows or largest" 2>&1 | tail -4 | tee out/gputests.txt
pk; echo "tests $((SECONDS-t0))"
SP="speed --shape qwen3-8b --device cuda --dtype bfloat16 --engine graph --budgets 64,256"
if [ -s out/tree_gemm.txt ]; then
timeout $(left 200) python3 scripts/ab.py specdiff.kernels.gemm.TREE_GEMM_SETTINGS=@out/tree_gemm.txt -- $SP 2>&1 | grep -v "it/s" | tee out/speed_gemm.txt
fi
pk; echo "done $((SECONDS-t0))"
