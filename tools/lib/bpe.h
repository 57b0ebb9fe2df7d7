/* bpe.h — learn a BPE vocabulary from a text, for the models rill-mkmodel
 * writes (the weights are random, the tokenizer is real).
 *
 * SPM kind (what `tokenizer.ggml.model` = "llama" files carry): ids 0 "<unk>"
 * (type unknown), 1 "<s>", 2 "</s>" (control), 3..258 "<0x00>".."<0xFF>"
 * (byte), then every character of the text and the learned merges as pieces
 * with "▁" (U+2581) for space, scored so that a higher score is merged
 * earlier.  GPT-2 kind: the 256 byte-level tokens, learned merges (listed in
 * `merges`, best first), then "<|begin_of_text|>" and "<|end_of_text|>".
 *
 * Training is deterministic: the same text and size give the same vocabulary
 * on every machine (ties are broken by byte order, never by hash order).
 * No learned piece is longer than 48 bytes.
 */
#ifndef RILL_BPE_H
#define RILL_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "worker/tokenizer.h"

struct bpe_vocab {
    enum tok_kind kind;
    uint32_t n;
    char **tokens;          /* n NUL-terminated strings (tokens contain no NUL) */
    float *scores;          /* n */
    int32_t *types;         /* n, enum tok_type */
    uint32_t n_merges;
    char **merges;          /* GPT-2 only: "a b", best first */
    int32_t bos, eos, unk;
};

/* Learn a vocabulary of exactly `vocab_size` tokens (if the text allows fewer
 * merges than that, training continues across word boundaries; if even that
 * is not enough, RILL_E_BAD_REQUEST with the reason in `why`).
 * The result is owned by the caller: bpe_vocab_free(). */
int bpe_train(const char *text, size_t len, enum tok_kind kind, uint32_t vocab_size,
              struct bpe_vocab *out, char *why, size_t why_len);
void bpe_vocab_free(struct bpe_vocab *v);

/* A tok_vocab view of a trained vocabulary (for tok_create in tests); the
 * arrays it points to live in `v` and in `scratch_lens` (n entries, and
 * n_merges entries in `scratch_merge_lens`), which the caller provides. */
void bpe_as_tok_vocab(const struct bpe_vocab *v, struct tok_vocab *tv,
                      uint32_t *scratch_lens, uint32_t *scratch_merge_lens);

#endif
