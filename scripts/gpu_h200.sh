#!/usr/bin/env bash
# GPU (meant for an H200): the real-scale table at the defaults, launch choices A/B'd on one model
# per shape, and the streaming GEMM's table for a card that has none, in the order STEPS names
# (default: all of them), each step packing $OUT/gpu_h200.tar:
#   tests   the GPU tests of the attention and GEMM kernels (SiLU-multiply in the gate/up GEMM's
#           epilogue included; a tree's GEMM, `tree_linear`), of the graphed chain launched
#           dependently, and of the forward with every GEMM streamed and in bf16;
#   ab:SHAPE  scripts/gpu_forward_ab.py: forwards of 1, 16 and 65 nodes, AR and a 5-layer drafter's
#           step at the defaults, and with tree attention's launch as it was before it kept its
#           programs to one wave (16-row blocks of 8 warps at 65 nodes);
#   attn    tree attention alone at Qwen3-8B's heads, 65 and 257 nodes, every launch setting
#           (scripts/gpu_attention.py, the fastest written out), then the same A/B as ab:SHAPE at
#           those node counts: the launch rule against the ones before it (16- and 128-row blocks
#           of 8 warps; 32-row blocks of 8 warps at 257) and against the fastest alone
#           (`attention.LAUNCH_SETTINGS`);
#   8b      `specdiff speed --shape qwen3-8b --budgets 64,256` (the table the targets name);
#   8b16    the same at `--budgets 16,64`;
#   1.7b    the same at Qwen3-1.7B, `--budgets 64`;
#   long    the 8B table (`--budgets 64,256`) and the 1.7B one (`--budgets 64`) after a 1,024-token
#           prompt, the longest the targets name;
#   sweep   where `gemm.MEASURED_STREAM_SETTINGS` has no table for this card: the bare streaming
#           GEMM swept per weight shape at 1 and 16 rows against cuBLAS (scripts/gpu_decode_gemm.py,
#           GLUE=0), its table written to out/stream_settings.txt, then both shapes' speed with it;
#   tree_gemm:SIZE  a tree's GEMMs at Qwen3-SIZE (8b, 1.7b), 17 and 65 rows: `kernels.tree_linear`
#           swept against cuBLAS (scripts/gpu_gemm_rows.py, the winners written out), then the A/B
#           of forwards of 17 and 65 nodes with them, and with cuBLAS for every tree GEMM;
#   treeab:SIZE  that A/B without the sweep: the defaults against cuBLAS for every tree GEMM;
#   tree_speed:SIZE  the SIZE table's command at --budgets 16,64 with tree_gemm:SIZE's sweep as
#           this card's TREE_GEMM_SETTINGS (skipped where no setting beat cuBLAS), then without
#           any (cuBLAS for every tree GEMM);
#   invariance  exact numerics' GEMMs: `tree_linear`'s batch invariance and speed per Qwen3-8B
#           weight (scripts/gpu_invariance.py, the winners written out), then the 8B speed in exact
#           numerics with them and without (`--numerics exact --budgets 16,64`), and in fast;
#   wide    exact numerics past 80 rows: the launch swept per Qwen3-8B weight with the table's
#           block_k and splits kept, `tree_linear` wider and, where the setting has no split, the
#           streaming kernel in 64 or 128-row blocks (scripts/gpu_invariance.py --wide, the
#           winners written out),
#           then forwards of 129 and 257 nodes in exact numerics with them, with the defaults and
#           with row groups of 64 (as before the widest group that fits), and the 8B speed in exact
#           numerics with them and without (`--budgets 64,256`), and in fast;
#   tail    past 80 rows, the rows past the last full group in a 16-row dot (`tree_gemm.TREE_TAIL`)
#           against a whole group: forwards of 129 and 257 nodes at Qwen3-8B in exact numerics, then
#           the 8B speed in exact numerics at `--budgets 64,128,256`;
#   exact:SIZE  Qwen3-SIZE's speed in exact numerics and in fast at the defaults, `--budgets 64,256`;
#   fixup   `tree_linear`'s K split summed in its own launch (`tree_gemm.TREE_SPLIT_FIXUP`, the default)
#           against the second launch (the variant): forwards of 17 and 65 nodes at Qwen3-8B and 1.7B (fast numerics), and of
#           1 and 65 at 8B in exact numerics, where o and down split at every row count;
#   flex    tree attention alone at Qwen3-8B's heads, 1-257 nodes: the Triton kernel against
#           FlexAttention (scripts/gpu_attention.py --flex);
#   narrow16  the same A/B at Qwen3-1.7B, 1 and 16 nodes: its down, QKV and o weights each streamed
#           at 16 rows too (this card's table with that entry changed; the settings each GEMM
#           alone was fastest with on an H100);
#   bundled the bundled pair's bench, function completion, T=0, 24 prompts: ar, ddtree@16 and @64,
#           ddtree-pld@16 and @64 (each against the best ddtree budget, `specdiff versus`);
#   vocab   the 8B speed with the drafter's head over the first 32,768 token ids (`--draft-vocab`);
#   profile the 8B forward kernel by kernel at 1 and 65 nodes.
# Needs .pack/models.tgz (scripts/README.md). Steps past DEADLINE (seconds, default 520) are cut off.
#   usage: STEPS="tests ab:qwen3-8b attn 8b sweep tree_gemm:8b narrow16" DEADLINE=520 bash scripts/gpu_h200.sh
DEADLINE=${DEADLINE:-520}
source scripts/gpu_call.sh
G="--device cuda --dtype bfloat16 --engine graph"
S="python3 -m specdiff"
# every listed card's tree table emptied: cuBLAS for every tree GEMM (a file: a runner is split on spaces)
python3 -c "from specdiff.kernels import gemm; print({c: {} for c in gemm.MEASURED_TREE_SETTINGS})" > out/tree_cublas.txt
speed() {  # output name, runner, shape, extra flags
  timeout "$(left 90)" $2 speed --shape "$3" $G ${@:4} 2>&1 | grep -v "it/s" | tee "out/speed_$1.txt"
  pk "speed $1"
}
exact_speeds() {  # a swept constant, its file, budgets, a name: the 8B speed in exact numerics with the
  # file's table (where the sweep wrote one), then at the defaults, then in fast numerics
  [ -s "$2" ] && speed "8b_exact_$4" "python3 scripts/ab.py $1=@$2 --" qwen3-8b --budgets "$3" --numerics exact
  speed 8b_exact "$S" qwen3-8b --budgets "$3" --numerics exact
  speed 8b_fast "$S" qwen3-8b --budgets "$3" --numerics fast
}
for step in ${STEPS:-tests ab:qwen3-8b ab:qwen3-1.7b 8b 1.7b sweep bundled vocab profile}; do
  case $step in
    tests)
      timeout "$(left 90)" python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_fused_forward.py tests/test_numerics.py \
        -rfE -k "attention or swiglu or decode_gemm or dependently or exact_kernels or exact_gemms or invariance_probe or bitwise_the_same or prologue or streamed or bf16_logits or tree_linear" 2>&1 | grep -v "it/s" | tail -12 \
        | tee out/gputests.txt
      # the epilogue failing on the device: every later step runs SiLU-multiply as its own launch
      grep -q "FAILED.*swiglu\|FAILED.*streamed" out/gputests.txt \
        && S="python3 scripts/ab.py specdiff.kernels.gemm.SWIGLU_EPILOGUE=False --"
      echo "runner: $S" | tee -a out/gputests.txt
      pk tests ;;
    ab:*)
      timeout "$(left 150)" python3 scripts/gpu_forward_ab.py --shape "${step#ab:}" --nodes 1,16,65 --turns 3 \
        --variant old_attention "specdiff.kernels.attention.LAUNCH_SETTINGS={(65, 65): (16, 1, None, 8)}" \
        2>&1 | grep -v "it/s" | tee "out/ab_${step#ab:}.txt"
      pk "$step" ;;
    attn)
      timeout "$(left 150)" python3 scripts/gpu_attention.py --nodes 65,257 --out out/attn_best.txt 2>&1 \
        | grep -v "it/s" | tee out/attention_sweep.txt
      pk "attention sweep"
      A=specdiff.kernels.attention.LAUNCH_SETTINGS
      SWEPT=(); [ -s out/attn_best.txt ] && SWEPT=(--variant swept "$A=@out/attn_best.txt")
      timeout "$(left 200)" python3 scripts/gpu_forward_ab.py --shape qwen3-8b --nodes 65,257 --turns 3 \
        --drafter-layers 0 --variant old_rule "$A={(65, 65): (16, 1, None, 8), (257, 257): (128, 1, None, 8)}" \
        --variant w8 "$A={(257, 257): (32, 1, None, 8)}" \
        "${SWEPT[@]}" 2>&1 | grep -v "it/s" | grep -v "^ab:" | tee out/ab_8b_attention.txt
      pk "$step" ;;
    tree_gemm:*|treeab:*)
      SZ=${step#*:}; TREE=()
      if [ "${step%%:*}" = tree_gemm ]; then
        ROWS=17,65 timeout "$(left 200)" python3 scripts/gpu_gemm_rows.py "$SZ" --out "out/tree_gemm_$SZ.txt" 2>&1 \
          | grep -v "it/s" | tee "out/tree_gemm_sweep_$SZ.txt"
        pk "tree gemm sweep $SZ"
        [ -s "out/tree_gemm_$SZ.txt" ] && TREE=(--variant swept "specdiff.kernels.gemm.TREE_GEMM_SETTINGS=@out/tree_gemm_$SZ.txt")
      fi
      timeout "$(left 200)" python3 scripts/gpu_forward_ab.py --shape "qwen3-$SZ" --nodes 17,65 --turns 3 \
        --drafter-layers 0 "${TREE[@]}" \
        --variant cublas specdiff.kernels.gemm.TREE_GEMM_SETTINGS=@out/tree_cublas.txt \
        2>&1 | grep -v "it/s" | grep -v "^ab:" | tee "out/ab_${SZ}_tree_gemm.txt"
      pk "$step" ;;
    invariance)
      (cd scripts && timeout "$(left 200)" python3 gpu_invariance.py 8b --out ../out/invariant_8b.txt 2>&1 \
        | grep -v "it/s" | tee ../out/invariance_8b.txt)
      pk "$step"
      exact_speeds specdiff.kernels.exact_gemm.INVARIANT_SETTINGS out/invariant_8b.txt 16,64 tree ;;
    wide)
      (cd scripts && timeout "$(left 240)" python3 gpu_invariance.py 8b --wide --out ../out/wide_8b.txt 2>&1 \
        | grep -v "it/s" | tee ../out/wide_sweep_8b.txt)
      pk "$step sweep"
      W=(); [ -s out/wide_8b.txt ] && W=(--variant swept "specdiff.kernels.exact_gemm.WIDE_LAUNCH=@out/wide_8b.txt")
      timeout "$(left 150)" python3 scripts/gpu_forward_ab.py --shape qwen3-8b --nodes 129,257 --turns 3 --numerics exact \
        --drafter-layers 0 "${W[@]}" --variant group64 "specdiff.kernels.tree_gemm.TREE_GROUP_ROWS=(64,)" 2>&1 \
        | grep -v "it/s" | grep -v "^ab:" | tee out/ab_8b_wide.txt
      pk "$step ab"
      exact_speeds specdiff.kernels.exact_gemm.WIDE_LAUNCH out/wide_8b.txt 64,256 wide ;;
    tail)
      timeout "$(left 150)" python3 scripts/gpu_forward_ab.py --shape qwen3-8b --nodes 129,257 --turns 3 --numerics exact \
        --drafter-layers 0 --variant no_tail specdiff.kernels.tree_gemm.TREE_TAIL=False 2>&1 \
        | grep -v "it/s" | grep -v "^ab:" | tee out/ab_8b_tail.txt
      pk "$step ab"
      speed 8b_exact "$S" qwen3-8b --budgets 64,128,256 --numerics exact ;;
    exact:*)
      speed "${step#exact:}_exact" "$S" "qwen3-${step#exact:}" --budgets 64,256 --numerics exact
      speed "${step#exact:}_fast" "$S" "qwen3-${step#exact:}" --budgets 64,256 --numerics fast ;;
    fixup)
      F="specdiff.kernels.tree_gemm.TREE_SPLIT_FIXUP=False"
      for sz in 8b 1.7b; do
        timeout "$(left 150)" python3 scripts/gpu_forward_ab.py --shape "qwen3-$sz" --nodes 17,65 --turns 3 \
          --drafter-layers 0 --variant second_launch $F 2>&1 | grep -v "it/s" | grep -v "^ab:" | tee "out/ab_${sz}_fixup.txt"
        pk "$step $sz"
      done
      timeout "$(left 150)" python3 scripts/gpu_forward_ab.py --shape qwen3-8b --nodes 1,65 --turns 3 --numerics exact \
        --drafter-layers 0 --variant second_launch $F 2>&1 | grep -v "it/s" | grep -v "^ab:" | tee out/ab_8b_exact_fixup.txt
      pk "$step exact" ;;
    flex)
      timeout "$(left 150)" python3 scripts/gpu_attention.py --flex --nodes 1,16,65,257 2>&1 | grep -v "it/s" \
        | tee out/flex_attention.txt
      pk "$step" ;;
    narrow16)
      python3 - <<'PY'
import copy, torch
from specdiff.kernels import gemm
cards = [c for c in gemm.MEASURED_STREAM_SETTINGS if torch.cuda.get_device_name().startswith(c)]
for name, shape, setting in [("down16", (2048, 6144), (16, 512, 4, 3)), ("qkv16", (4096, 2048), (32, 128, 4, 5)),
                             ("o16", (2048, 2048), (16, 512, 4, 3))]:
    table = copy.deepcopy(gemm.MEASURED_STREAM_SETTINGS)
    for card in cards:
        table[card].setdefault(shape, {})[16] = setting
    open(f"out/{name}.txt", "w").write(repr(table))
PY
      N=specdiff.kernels.gemm.STREAM_SETTINGS
      timeout "$(left 120)" python3 scripts/gpu_forward_ab.py --shape qwen3-1.7b --nodes 1,16 --turns 3 \
        --variant down16 $N=@out/down16.txt --variant qkv16 $N=@out/qkv16.txt --variant o16 $N=@out/o16.txt \
        2>&1 | grep -v "it/s" | grep -v "^ab:" | tee out/ab_1.7b_narrow16.txt
      pk "$step" ;;
    8b) speed 8b "$S" qwen3-8b --budgets 64,256 ;;
    8b16) speed 8b_16_64 "$S" qwen3-8b --budgets 16,64 ;;
    tree_speed:*)
      SZ=${step#*:}
      if [ -s "out/tree_gemm_$SZ.txt" ] && python3 -c "import ast, sys
sys.exit(not any(v for c in ast.literal_eval(open('out/tree_gemm_$SZ.txt').read()).values() for t in c.values() for v in t.values()))"; then
        speed "${SZ}_tree" "python3 scripts/ab.py specdiff.kernels.gemm.TREE_GEMM_SETTINGS=@out/tree_gemm_$SZ.txt --" \
          "qwen3-$SZ" --budgets 16,64
        speed "${SZ}_cublas" "python3 scripts/ab.py specdiff.kernels.gemm.TREE_GEMM_SETTINGS=@out/tree_cublas.txt --" \
          "qwen3-$SZ" --budgets 16,64
      fi ;;
    1.7b) speed 1.7b "$S" qwen3-1.7b --budgets 64 ;;
    long)
      speed 8b_long "$S" qwen3-8b --budgets 64,256 --prompt-tokens 1024
      speed 1.7b_long "$S" qwen3-1.7b --budgets 64 --prompt-tokens 1024 ;;
    sweep)
      if python3 -c "import sys, torch; from specdiff.kernels import gemm
sys.exit(any(torch.cuda.get_device_name().startswith(c) for c in gemm.MEASURED_STREAM_SETTINGS))"; then
        GLUE=0 SPLIT=0 ROWS=1,16 SETTINGS_OUT=out/stream_settings.txt timeout "$(left 220)" \
          python3 scripts/gpu_decode_gemm.py 8b,1.7b 2>&1 | grep -v "it/s" | tee out/stream_sweep.txt
        pk "stream sweep"
        if [ -s out/stream_settings.txt ]; then
          T="python3 scripts/ab.py specdiff.kernels.gemm.STREAM_SETTINGS=@out/stream_settings.txt --"
          speed 8b_table "$T" qwen3-8b --budgets 64
          speed 1.7b_table "$T" qwen3-1.7b --budgets 64
        fi
      else
        echo "sweep: this card has a table already" | tee out/stream_sweep.txt
      fi ;;
    bundled)
      timeout "$(left 60)" $S bench $G --prompts data/prompts/function_completion.jsonl --temperature 0 \
        --limit 24 --methods ar,ddtree,ddtree-pld --budgets 16,64 --out out/bundled 2>&1 | grep -v "it/s" | tail -12 \
        | tee out/bundled.txt
      for b in 16 64; do $S versus out/bundled --method ddtree-pld@$b 2>&1 | tee -a out/bundled.txt; done
      pk bundled ;;
    vocab) speed 8b_draft_vocab "$S" qwen3-8b --budgets 64 --draft-vocab 32768 ;;
    profile)
      timeout "$(left 60)" python3 scripts/gpu_profile.py --shape qwen3-8b --nodes 1,65 2>&1 | grep -v "it/s" \
        | tee out/profile_8b.txt
      pk "profile 8b" ;;
  esac
done
