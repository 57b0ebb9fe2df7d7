/* tokenizer.h — text <-> token ids for the vocabularies GGUF files carry:
 * SentencePiece-style BPE (`tokenizer.ggml.model` = "llama": scores, byte
 * fallback tokens "<0xNN>", "▁" for space) and GPT-2 byte-level BPE ("gpt2":
 * byte-to-unicode mapped tokens, ranked `tokenizer.ggml.merges`, a
 * pre-tokenizer regex chosen by `tokenizer.ggml.pre`).
 *
 * A `struct tok` is immutable after tok_create() and may be shared by threads.
 * Streaming detokenization keeps its state in a small `struct tok_stream` per
 * sequence and never allocates.
 */
#ifndef RILL_TOKENIZER_H
#define RILL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tok_kind { TOK_SPM = 1, TOK_GPT2 = 2 };

/* GGUF token types (tokenizer.ggml.token_type). */
enum tok_type {
    TOK_T_NORMAL = 1, TOK_T_UNKNOWN = 2, TOK_T_CONTROL = 3,
    TOK_T_USER = 4, TOK_T_UNUSED = 5, TOK_T_BYTE = 6
};

/* What tok_create() needs, borrowed (copied by tok_create).  Strings are not
 * NUL-terminated: GGUF stores them length-prefixed. */
struct tok_vocab {
    enum tok_kind kind;
    uint32_t n;                      /* vocabulary size */
    const char *const *tokens;       /* n token strings */
    const uint32_t *token_lens;      /* n lengths in bytes */
    const float *scores;             /* n scores (SPM; may be NULL for GPT-2) */
    const int32_t *types;            /* n enum tok_type values (may be NULL: all normal) */
    uint32_t n_merges;               /* GPT-2: ranked merges "a b", best first */
    const char *const *merges;
    const uint32_t *merge_lens;
    int32_t bos, eos, unk, pad;      /* -1 when absent */
    int32_t eot;                     /* extra end-of-generation id (e.g. <|eot_id|>), -1 if none */
    const int32_t *eog;              /* n_eog more end-of-generation ids (may be NULL) */
    const uint8_t *strip;            /* n flags TOK_LSTRIP|TOK_RSTRIP (may be NULL: none) */
    uint32_t n_eog;
    bool add_bos;                    /* prepend BOS when encoding a prompt */
    bool add_eos;                    /* append EOS when encoding a prompt */
    bool add_space_prefix;           /* SPM: prepend "▁" to the text (default true) */
    const char *pre;                 /* GPT-2 pre-tokenizer name ("gpt2", "llama-bpe", "smollm", …); NULL = "gpt2" */
};

/* Special tokens that, cut out of a prompt, take the whitespace before
 * (LSTRIP) or after (RSTRIP) them along (Hugging Face's added-token flags;
 * llama.cpp sets them for Phi-3). */
#define TOK_LSTRIP 1u
#define TOK_RSTRIP 2u

struct tok;

/* Build a tokenizer.  Errors: RILL_E_BAD_FORMAT (with a reason in `why`) for
 * an inconsistent vocabulary (ids out of range, SPM without byte tokens, a
 * merge naming unknown tokens, …), RILL_E_UNSUPPORTED for an unknown kind or
 * pre-tokenizer, RILL_E_NOMEM. */
int tok_create(const struct tok_vocab *v, struct tok **out, char *why, size_t why_len);
void tok_free(struct tok *t);

uint32_t tok_n_vocab(const struct tok *t);
int32_t tok_bos(const struct tok *t);
int32_t tok_eos(const struct tok *t);
bool tok_add_bos(const struct tok *t);
bool tok_add_eos(const struct tok *t);
/* Whether generating `id` ends the generation: EOS, EOT and the vocabulary's
 * `eog` ids (vocab_load fills those as llama.cpp derives them). */
bool tok_is_eog(const struct tok *t, int32_t id);

/* Encode `len` bytes of text (any bytes; invalid UTF-8 is encoded through the
 * byte fallback or byte-level tokens, never rejected), as llama.cpp's
 * llama_tokenize(add_special = false, parse_special = false): control tokens
 * written in the text ("<s>", "<|im_start|>") are NOT recognized, so the text
 * cannot inject them; user-defined tokens (Qwen's "<think>") are, as in
 * llama.cpp and Hugging Face.  BOS is prepended when add_bos.  Writes at most
 * `cap` ids; *n_out is the total count, and RILL_E_TOO_LARGE is returned when
 * it exceeds `cap`. */
int tok_encode(const struct tok *t, const char *text, size_t len, bool add_bos,
               int32_t *ids, size_t cap, size_t *n_out);

/* tok_encode_ex flags. */
#define TOK_ENC_ADD_SPECIAL   1u /* BOS / EOS as the vocabulary's add_bos / add_eos say */
#define TOK_ENC_PARSE_SPECIAL 2u /* control-token text ("<|im_start|>") becomes that token */

/* tok_encode with llama.cpp's two switches (llama_tokenize's add_special and
 * parse_special).  A prompt from a chat template wants both; text from an
 * untrusted source wants PARSE_SPECIAL off.  Same errors as tok_encode. */
int tok_encode_ex(const struct tok *t, const char *text, size_t len, unsigned flags,
                  int32_t *ids, size_t cap, size_t *n_out);

/* The raw bytes a token stands for ("▁the" -> " the", "<0x0A>" -> "\n",
 * GPT-2 "Ġthe" -> " the"); control tokens have no bytes.  The pointer is owned
 * by the tokenizer.  RILL_E_BAD_REQUEST for an id out of range. */
int tok_piece(const struct tok *t, int32_t id, const char **bytes, size_t *len);

/* Streaming detokenization.  The text of each pushed token is exactly the new
 * text it completes: bytes of a UTF-8 character split over several tokens are
 * held back and emitted whole with the token that completes it; bytes that can
 * never form a valid character are emitted as U+FFFD (one per maximal invalid
 * subpart, as the Unicode standard recommends).  Concatenating every push and
 * the final flush equals tok_decode() of the whole sequence. */
struct tok_stream {
    uint8_t held[4];
    uint8_t n_held;
};
#define TOK_STREAM_MAX_TEXT 256 /* longest text one push can return */

void tok_stream_init(struct tok_stream *s);
/* Push one generated token; writes up to `cap` bytes of valid UTF-8 into out
 * and returns how many (cap >= TOK_STREAM_MAX_TEXT always suffices; a token
 * piece longer than that is truncated at a character boundary). */
size_t tok_stream_push(const struct tok *t, struct tok_stream *s, int32_t id, char *out, size_t cap);
/* End of the sequence: held bytes (an unfinished character) become U+FFFD. */
size_t tok_stream_flush(struct tok_stream *s, char *out, size_t cap);

/* Decode a whole sequence into valid UTF-8 (same rules as the stream, written
 * independently: concatenate the pieces, then replace invalid subparts).
 * Returns the length it needs; writes at most cap bytes. */
size_t tok_decode(const struct tok *t, const int32_t *ids, size_t n, char *out, size_t cap);

#endif
