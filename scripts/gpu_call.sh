# Shared by the GPU call recipes that pack $OUT/RECIPE.tar after every step (sourced, after setting
# DEADLINE's default): unpacks the carried models, starts out/, and defines
#   left N  the seconds a step may take: N, or what is left of DEADLINE if less;
#   pk NAME packs out/ into $OUT/$PACK.tar (PACK: the recipe's name unless set, so recipes run one
#           after another in a call keep their files) and prints the step's end time.
set -u
[ -f .pack/models.tgz ] && tar xzf .pack/models.tgz
rm -rf out; mkdir -p out "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
t0=$SECONDS
left() { l=$(( DEADLINE - (SECONDS - t0) )); [ $l -lt $1 ] && echo $l || echo $1; }
PACK=${PACK:-$(basename "$0" .sh)}
pk() { tar -C out -cf "$OUT/$PACK.tar" . ; echo "--- $1 ($((SECONDS - t0)) s)"; }
nvidia-smi --query-gpu=name --format=csv | tee out/gpu.txt
