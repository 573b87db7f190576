/* The decode loop's per-node host work, in C: on a GPU host a round's host time is round time, and
 * in Python it grows by about a microsecond per tree node (a heap pop, a mask row, a child lookup).
 * Each function has a Python reference it is tested against. Built and loaded by `native.py`.
 *
 * top_prefixes: DDTree's best-first search over per-depth top-k log-probs. The same arithmetic
 * and tie order as `ddtree.iter_best_first` (double keys, minus scores, ties by push order), so
 * the pops are the same, bit for bit. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct { double key; int64_t tie; int depth, rank, parent; } Entry;

static int before(const Entry *a, const Entry *b) {
    return a->key < b->key || (a->key == b->key && a->tie < b->tie);
}

static void sift_down(Entry *h, int n, int i) {
    Entry e = h[i];
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(&h[c + 1], &h[c])) c++;
        if (!before(&h[c], &e)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = e;
}

static void sift_up(Entry *h, int i) {
    Entry e = h[i];
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!before(&e, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

/* logp: [L, K] row-major, each row sorted decreasing; ids: [L, K] tokens. Pops up to `width`
 * prefixes into table [3, width + 1] (rows token, parent, depth; column c is tree node c, and
 * column 0, the root, is left alone) and scores [2, width] (rows log-prob, phi: the running sum of
 * probabilities). Returns the number popped; *exact is the number of them that are exact over
 * every candidate: all, unless a pop used a depth's last candidate (rank K-1) while K was not the
 * whole vocabulary (`complete` = 0), after which the stream may miss a next sibling.
 *
 * With nsizes > 0 it also takes caddtree's decision as it pops (trees/caddtree.py `_grow`, its
 * Python reference): the value of each compared size sizes[i] (root included), a round of cost
 * c = fixed + steps[i], is theta = (1 + phi) / c (lam = 0: this round's own ratio) or
 * 1 + phi - lam * c (lam > 0: its gain to a decode running at lam tokens per ms). It stops at the
 * first size whose value falls, or earlier once even the delta of the last pop for every node
 * still to come cannot lift the next size above the best; the root alone (fixed + root_step)
 * weighed last. *keep: the draft nodes to keep, or -1 when a pop used a depth's last candidate
 * before the decision was settled (the caller fetches them all). */
static double value(double phi, double cost, double lam) { return lam > 0 ? 1.0 + phi - lam * cost : (1.0 + phi) / cost; }
/* the phi a size of cost `cost` needs to beat the value `best` (value > best <=> phi > need) */
static double need_for(double best, double cost, double lam) { return lam > 0 ? best + lam * cost - 1.0 : best * cost - 1.0; }

int top_prefixes(const float *logp, const int64_t *ids, int L, int K, int width, int complete,
                 int64_t *table, double *scores, int64_t *exact, const int64_t *sizes, const double *steps,
                 int nsizes, double fixed, double root_step, double lam, int64_t *keep) {
    int64_t *tokens = table + 1, *parents = table + (width + 1) + 1, *depths = table + 2 * (width + 1) + 1;
    double *logp_out = scores, *phi = scores + width;
    *exact = 0;
    if (nsizes > 0) *keep = 0;  /* nothing popped: the root alone */
    if (L <= 0 || K <= 0 || width <= 0) return 0;
    Entry *heap = malloc(sizeof(Entry) * (size_t)(width + 2));
    if (!heap) return -1;
    int n = 0, size = 1, node = 0, seen_last = 0, stopped = 0;
    int64_t tie = 1;
    double total = 0.0;
    /* the decision: best value so far at best_n nodes, the next size's node count `bound`, and
     * the phi it needs to beat the best */
    double best = 0.0, need = -HUGE_VAL;
    int best_n = 0, i = 0, bound = nsizes > 0 ? (int)sizes[0] - 1 : 0;
    heap[0] = (Entry){ -(double)logp[0], 0, 0, 0, 0 };
    while (size > 0 && n < width) {
        Entry top = heap[0];
        node += 1;
        double score = -top.key, delta = exp(score);
        parents[n] = top.parent;
        tokens[n] = ids[(int64_t)top.depth * K + top.rank];
        depths[n] = top.depth + 1;
        logp_out[n] = score;
        total += delta;
        phi[n] = total;
        n += 1;
        if (!seen_last) {
            *exact = n;
            if (!complete && top.rank == K - 1) seen_last = 1;
        }
        if (nsizes > 0) {
            if (n == bound) {
                if (total <= need) { stopped = 1; break; }
                best = value(total, fixed + steps[i], lam);
                best_n = n;
                if (++i == nsizes) { stopped = 1; break; }  /* every size compared */
                bound = (int)sizes[i] - 1;
                need = need_for(best, fixed + steps[i], lam);
            }
            if (best_n && total + (double)(bound - n) * delta <= need) { stopped = 1; break; }  /* peaked */
            if (seen_last) { *keep = -1; free(heap); return n; }  /* needs candidates past the last */
        }
        const float *row = logp + (int64_t)top.depth * K;
        if (top.rank < K - 1) {  /* next sibling takes the popped entry's place */
            heap[0] = (Entry){ top.key - (-(double)row[top.rank]) + (-(double)row[top.rank + 1]), tie++,
                               top.depth, top.rank + 1, top.parent };
            sift_down(heap, size, 0);
        } else {
            heap[0] = heap[--size];
            if (size > 0) sift_down(heap, size, 0);
        }
        if (top.depth < L - 1) {  /* first child: the best token one depth down */
            heap[size] = (Entry){ top.key + (-(double)logp[(int64_t)(top.depth + 1) * K]), tie++,
                                  top.depth + 1, 0, node };
            sift_up(heap, size++);
        }
    }
    free(heap);
    if (nsizes > 0) {
        if (!stopped && size == 0 && n && (!best_n || value(total, fixed + steps[i], lam) > best)) {  /* ran out */
            best = value(total, fixed + steps[i], lam);
            best_n = n;
        }
        *keep = best_n && best > value(0.0, fixed + root_step, lam) ? best_n : 0;
    }
    return n;
}

/* mask: [size, stride] bytes, size >= n. Row i < n gets 1 at i and at each ancestor of i (parents
 * come first, so a row is its parent's row plus itself); padding rows (i >= n) only their
 * diagonal, as a padded graph bucket needs. Columns [0, size) are written. */
void ancestor_mask(const int64_t *parents, int n, uint8_t *mask, int64_t stride, int size) {
    for (int i = 0; i < size; i++) {
        uint8_t *row = mask + (int64_t)i * stride;
        if (i > 0 && i < n) memcpy(row, mask + parents[i] * stride, (size_t)size);
        else memset(row, 0, (size_t)size);
        row[i] = 1;
    }
}

/* The walk (verify/walk.py): from the root, move to the first child holding the target's draw
 * while there is one. accepted: up to n node indices, root first. Returns how many. */
int walk(const int64_t *parents, const int64_t *tokens, const int64_t *draws, int n, int64_t *accepted) {
    int node = 0, count = 0;
    accepted[count++] = 0;
    for (;;) {
        int next = -1;
        for (int c = node + 1; c < n; c++)
            if (parents[c] == node && tokens[c] == draws[node]) { next = c; break; }
        if (next < 0) return count;
        accepted[count++] = next;
        node = next;
    }
}
