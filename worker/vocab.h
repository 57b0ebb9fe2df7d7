/* vocab.h — a tokenizer from a GGUF file's `tokenizer.*` metadata.
 *
 * The one place that reads those keys: the model loader (model.c) calls it
 * for a full model, and a vocabulary-only GGUF (llama.cpp's
 * `ggml-vocab-*.gguf`: metadata, no tensors) loads through it alone.
 *
 * Keys read, with llama.cpp's defaults when absent:
 *   tokenizer.ggml.model            "llama" (SentencePiece) or "gpt2" (byte-level BPE); required
 *   tokenizer.ggml.tokens           required; scores, token_type, merges optional
 *   tokenizer.ggml.pre              GPT-2 pre-tokenizer name (default "gpt2")
 *   tokenizer.ggml.{bos,eos,unknown,padding,eot,eom}_token_id
 *   tokenizer.ggml.fim_{pad,rep,sep}_token_id   (end of generation, as in llama.cpp)
 *   tokenizer.ggml.add_bos_token    default true for SentencePiece, false for BPE
 *   tokenizer.ggml.add_space_prefix default true for SentencePiece
 */
#ifndef RILL_VOCAB_H
#define RILL_VOCAB_H

#include <stddef.h>

#include "worker/gguf.h"
#include "worker/tokenizer.h"

/* Build a tokenizer from g's metadata.  *out is owned by the caller
 * (tok_free).  Errors: RILL_E_BAD_FORMAT (no tokenizer in the file, a key of
 * the wrong type or length, an inconsistent vocabulary), RILL_E_UNSUPPORTED
 * (an unknown tokenizer model or pre-tokenizer), RILL_E_NOMEM; `why` names
 * the problem. */
int vocab_load(const struct gguf *g, struct tok **out, char *why, size_t why_len);

#endif
