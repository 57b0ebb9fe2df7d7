/* intake.c — see intake.h.
 *
 * The jobs are one list in arrival order.  The loop appends at the tail and
 * pops at the head; the thread works along it from `todo`, the first job it
 * has not started (every job before it is done).  One mutex guards the links, `todo` and each job's `done` and
 * `cancelled`; the thread holds it only to take a job and to hand it back,
 * never while it tokenizes, so the loop never waits on a prompt.  A job's
 * request is only read while the thread may read it too; the thread's
 * results (rc, prompt, why) are read by the loop only once the job is done.
 */
#include "intake.h"
#include "chat.h"
#include "common/err.h"
#include "common/log.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

struct intake {
    const struct tok *tk;
    uint32_t max_ctx;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* the thread waits on it for work or stop */
    struct intake_job *head, *tail, *todo;
    uint32_t n;                 /* jobs on the list (the loop's only) */
    uint64_t bytes;             /* their prompts' bytes (the loop's only) */
    bool stop;
    int efd;                    /* eventfd: a job is done */
    struct chat_tmpl *chat;     /* the model's chat template, or NULL */
    char *bos, *eos;            /* what its bos_token / eos_token are */
    char chat_why[160];         /* why there is none */
};

/* Make intake_fd() readable (called with the lock held, see intake_pop). */
static void wake_loop(struct intake *in)
{
    uint64_t one = 1;
    if (write(in->efd, &one, sizeof one) != sizeof one)
        rlog_warn("intake: eventfd write failed: %s", strerror(errno));
}

/* A chat request: its messages through the template, then the text
 * tokenized as a template's output is (control tokens parsed).  The job's
 * request is left as it came: the loop may read it meanwhile. */
static int job_chat(const struct intake *in, struct intake_job *j)
{
    if (!in->chat)
        return rill_fail(j->why, sizeof j->why, RILL_E_BAD_REQUEST, "%s", in->chat_why);
    struct chat_opts o = {.bos_token = in->bos, .eos_token = in->eos, .add_generation_prompt = true,
                          .max_output = PROTO_MAX_PROMPT};
    if (j->req.tools.len) {
        o.tools_json = j->req.tools.p;
        o.tools_len = j->req.tools.len;
    }
    char *text = NULL;
    size_t n = 0;
    int rc = chat_tmpl_render(in->chat, j->req.messages.p, j->req.messages.len, &o, &text, &n, NULL, j->why,
                              sizeof j->why);
    if (rc) /* wire codes: the conversation, or its size, is the client's */
        return rc == RILL_E_NOMEM ? rc : rc == RILL_E_TOO_LARGE ? RILL_E_PROMPT_TOO_LONG : RILL_E_BAD_REQUEST;
    struct proto_submit r = j->req;
    r.prompt = text;
    r.prompt_len = (uint32_t)n;
    r.parse_special = true;
    rc = prompt_tokenize(in->tk, in->max_ctx, &r, &j->prompt, j->why, sizeof j->why);
    free(text);
    return rc;
}

static void job_tokenize(const struct intake *in, struct intake_job *j)
{
    if (j->req.messages.len)
        j->rc = job_chat(in, j);
    else
        j->rc = prompt_tokenize(in->tk, in->max_ctx, &j->req, &j->prompt, j->why, sizeof j->why);
    if (j->rc)
        prompt_free(&j->prompt);
}

/* The thread yields to the loop and the compute pool: where the forward pass
 * keeps every core busy, a running stream's next token matters more than how
 * soon a new prompt is admitted.  At nice 10 it gets ~10% of a core it
 * shares with a busy compute thread (that thread keeps ~90%, so steps slow
 * by a few percent, not by half): slowed there, never starved. */
#define INTAKE_NICE 10

static void *intake_main(void *arg)
{
    struct intake *in = arg;
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), INTAKE_NICE) != 0)
        rlog_debug("intake: cannot lower the tokenizer thread's priority: %s", strerror(errno));
    pthread_mutex_lock(&in->mu);
    for (;;) {
        while (!in->todo && !in->stop)
            pthread_cond_wait(&in->cv, &in->mu);
        if (in->stop)
            break;
        struct intake_job *j = in->todo;
        pthread_mutex_unlock(&in->mu);
        job_tokenize(in, j);
        pthread_mutex_lock(&in->mu);
        j->done = true;
        in->todo = j->next;
        wake_loop(in);
    }
    pthread_mutex_unlock(&in->mu);
    return NULL;
}

int intake_create(const struct tok *tk, uint32_t max_ctx, struct intake **out)
{
    *out = NULL;
    struct intake *in = calloc(1, sizeof *in);
    if (!in)
        return RILL_E_NOMEM;
    in->tk = tk;
    in->max_ctx = max_ctx;
    pthread_mutex_init(&in->mu, NULL);
    pthread_cond_init(&in->cv, NULL);
    in->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (in->efd < 0 || pthread_create(&in->thread, NULL, intake_main, in) != 0) {
        intake_free(in);
        return RILL_E_IO;
    }
    in->thread_started = true;
    pthread_setname_np(in->thread, "rill-intake");
    *out = in;
    return 0;
}

void intake_job_free(struct intake_job *j)
{
    if (!j)
        return;
    free((void *)j->req.prompt);
    free((void *)j->req.prompt_tokens);
    free((void *)j->req.messages.p);
    free((void *)j->req.tools.p);
    prompt_free(&j->prompt);
    free(j);
}

void intake_stop(struct intake *in, int code)
{
    pthread_mutex_lock(&in->mu);
    in->stop = true;
    pthread_cond_signal(&in->cv);
    pthread_mutex_unlock(&in->mu);
    if (in->thread_started) {
        pthread_join(in->thread, NULL);
        in->thread_started = false;
    }
    /* The thread is gone: what it never started is done, with `code`. */
    pthread_mutex_lock(&in->mu);
    for (struct intake_job *j = in->todo; j; j = j->next) {
        j->rc = code;
        rill_why(j->why, sizeof j->why, "the worker stopped before the prompt was tokenized");
        j->done = true;
    }
    in->todo = NULL;
    if (in->head && in->efd >= 0)
        wake_loop(in);
    pthread_mutex_unlock(&in->mu);
}

void intake_free(struct intake *in)
{
    if (!in)
        return;
    intake_stop(in, RILL_E_SHUTTING_DOWN);
    while (in->head) {
        struct intake_job *j = in->head;
        in->head = j->next;
        intake_job_free(j);
    }
    if (in->efd >= 0)
        close(in->efd);
    chat_tmpl_free(in->chat);
    free(in->bos);
    free(in->eos);
    pthread_cond_destroy(&in->cv);
    pthread_mutex_destroy(&in->mu);
    free(in);
}

int intake_set_chat(struct intake *in, struct chat_tmpl *tmpl, const char *bos, const char *eos, const char *why)
{
    chat_tmpl_free(in->chat);
    free(in->bos);
    free(in->eos);
    in->chat = tmpl;
    in->bos = strdup(bos ? bos : "");
    in->eos = strdup(eos ? eos : "");
    snprintf(in->chat_why, sizeof in->chat_why, "%s", why ? why : "this model has no chat template");
    return in->bos && in->eos ? 0 : RILL_E_NOMEM;
}

int intake_fd(const struct intake *in) { return in->efd; }

uint32_t intake_count(const struct intake *in) { return in->n; }
uint64_t intake_bytes(const struct intake *in) { return in->bytes; }

int intake_push(struct intake *in, struct proto_submit *req, uint64_t t_arrive)
{
    struct intake_job *j = calloc(1, sizeof *j);
    if (!j)
        return RILL_E_NOMEM;
    j->req = *req;
    req->prompt = NULL;
    req->prompt_tokens = NULL;
    req->prompt_len = 0;
    req->n_prompt_tokens = 0;
    req->messages = (struct proto_text){0};
    req->tools = (struct proto_text){0};
    j->req.prior = (struct proto_text){0}; /* the journal's, not the job's: the message frees it */
    j->t_arrive = t_arrive;
    pthread_mutex_lock(&in->mu);
    if (in->stop) {
        /* Stopped: nobody will tokenize it, so it is done already. */
        j->rc = RILL_E_SHUTTING_DOWN;
        rill_why(j->why, sizeof j->why, "the worker is stopping");
        j->done = true;
    } else if (!in->todo) {
        in->todo = j;
    }
    if (in->tail)
        in->tail->next = j;
    else
        in->head = j;
    in->tail = j;
    in->n++;
    in->bytes += j->req.prompt_len + j->req.messages.len + j->req.tools.len;
    if (j->done)
        wake_loop(in);
    pthread_cond_signal(&in->cv);
    pthread_mutex_unlock(&in->mu);
    return 0;
}

/* The head, taken off the list, if it is done (under the lock). */
static struct intake_job *take_done_head(struct intake *in)
{
    struct intake_job *j = in->head;
    if (!j || !j->done)
        return NULL;
    in->head = j->next;
    if (!in->head)
        in->tail = NULL;
    j->next = NULL;
    in->n--;
    in->bytes -= j->req.prompt_len + j->req.messages.len + j->req.tools.len;
    return j;
}

struct intake_job *intake_pop(struct intake *in)
{
    pthread_mutex_lock(&in->mu);
    struct intake_job *j = take_done_head(in);
    if (!j) {
        /* Nothing ready: the eventfd goes quiet until the next job is done
         * (the thread marks it done and writes under this lock, so no
         * wake-up is lost between the look and the read). */
        uint64_t v;
        while (read(in->efd, &v, sizeof v) == sizeof v)
            ;
    }
    pthread_mutex_unlock(&in->mu);
    return j;
}

/* The head is the only job the loop waits for: every job before `todo` is
 * done, so when the head is not, it is the one being tokenized. */
static bool head_done(struct intake *in, bool drain)
{
    pthread_mutex_lock(&in->mu);
    bool done = in->head && in->head->done;
    uint64_t v;
    while (!done && drain && read(in->efd, &v, sizeof v) == sizeof v)
        ;
    pthread_mutex_unlock(&in->mu);
    return done;
}

bool intake_wait(struct intake *in, uint32_t timeout_us)
{
    if (head_done(in, true))
        return true;
    /* The eventfd is quiet now (drained under the lock): it turns readable
     * only when a job is done after this. */
    struct pollfd pfd = {.fd = in->efd, .events = POLLIN};
    struct timespec ts = {.tv_sec = timeout_us / 1000000, .tv_nsec = (long)(timeout_us % 1000000) * 1000};
    if (ppoll(&pfd, 1, &ts, NULL) < 0 && errno != EINTR)
        rlog_warn("intake: ppoll failed: %s", strerror(errno));
    return head_done(in, false);
}

static struct intake_job *find_locked(struct intake *in, uint64_t id)
{
    for (struct intake_job *j = in->head; j; j = j->next)
        if (j->req.id == id)
            return j;
    return NULL;
}

int intake_cancel(struct intake *in, uint64_t id)
{
    pthread_mutex_lock(&in->mu);
    struct intake_job *j = find_locked(in, id);
    if (j)
        j->cancelled = true;
    pthread_mutex_unlock(&in->mu);
    return j ? 0 : RILL_E_NOT_FOUND;
}

uint32_t intake_cancel_matching(struct intake *in, uint64_t mask, uint64_t value)
{
    uint32_t n = 0;
    pthread_mutex_lock(&in->mu);
    for (struct intake_job *j = in->head; j; j = j->next)
        if ((j->req.id & mask) == value && !j->cancelled) {
            j->cancelled = true;
            n++;
        }
    pthread_mutex_unlock(&in->mu);
    return n;
}

bool intake_has(struct intake *in, uint64_t id)
{
    pthread_mutex_lock(&in->mu);
    bool has = find_locked(in, id) != NULL;
    pthread_mutex_unlock(&in->mu);
    return has;
}
