/* The C ABI between insideout's engine and continuation code (built-ins, plugins).
 *
 * This is the only thing a plugin and the daemon share at run time, so it is plain C:
 * a plugin built with another compiler, or against an older SDK, still loads, and the
 * engine can tell when it cannot (abi_version, struct sizes, SDK major version).
 *
 * Rules that keep it stable:
 *   - Structs only grow at their end; each carries its size, and a reader never touches
 *     a field past the size the writer gave.
 *   - IO_SDK_ABI_VERSION changes when a field changes meaning, width or order; the
 *     engine refuses a plugin of another ABI version.
 *   - Nothing crosses the boundary that needs the other side's allocator or C++ runtime:
 *     no exceptions (the C++ layer in <insideout/sdk.hpp> catches them in the plugin),
 *     no std:: types.
 *
 * The C++ layer in <insideout/sdk.hpp> is what plugin authors use; this header is what
 * it is built on. */
#ifndef INSIDEOUT_SDK_ABI_H_
#define INSIDEOUT_SDK_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IO_SDK_ABI_VERSION 1u
/* The SDK headers' version: major (incompatible) << 16 | minor (additions only). */
#define IO_SDK_VERSION ((1u << 16) | 1u) /* 1.1: the event queue (park_fd ...) */
#define IO_SDK_VERSION_MAJOR(v) ((v) >> 16)

typedef struct io_task io_task;
typedef struct io_ctx io_ctx;

/* What a step returns. */
typedef uint32_t io_step;
enum {
  IO_STEP_CONTINUE = 0, /* run task->fn (already replaced) at once, on this worker */
  IO_STEP_YIELD = 1,    /* requeue; another worker may take it */
  IO_STEP_PARK = 2,     /* parked by ops->park_until(); resumes with task->fn */
  IO_STEP_WAIT = 3,     /* someone resumes it (ops->resume(), a child finishing) */
  IO_STEP_COMPLETE = 4, /* done: the result was set in the context */
  IO_STEP_FAIL = 5,     /* done with the error set by ops->fail() */
  IO_STEP_MOVED = 6,    /* handed to another pool by ops->move_to(); resumes there */
};

typedef io_step (*io_step_fn)(io_task* task, io_ctx* ctx);

/* A continuation as its code sees it. `fn` is the next step; w0 and w1 belong to the
 * function (its entry step finds the submission's scalar argument in w0). The engine
 * keeps its own fields after these; a task is moved between workers by pointer and
 * must not be copied. */
struct io_task {
  io_step_fn fn;
  uint64_t w0;
  uint64_t w1;
};

/* Errors a step may fail with (the client sees them as Status/ErrorDetail). */
enum {
  IO_ERR_FAILED = 1,           /* the function failed; see the message */
  IO_ERR_INVALID_ARGUMENT = 2, /* the argument or environment is not acceptable */
  IO_ERR_RESULT_TOO_LARGE = 3, /* the output does not fit where the client asked for it */
  IO_ERR_CANCELLED = 4,        /* it noticed ops->cancelled() and stopped */
};

/* Values of io_function_def.flags. */
enum {
  IO_FN_NEEDS_BUFFER = 1u << 0, /* the environment must be a buffer in the client's segment */
  IO_FN_OUTPUT = 1u << 1,       /* writes output bytes in place: the environment is the
                                   whole output buffer (ops->output()), and by convention
                                   the scalar argument is the length of the input at its
                                   start */
};

/* Events a continuation waits for on a descriptor (ops->park_fd), and what the wait's
 * result reports: a non-negative mask of IO_EV_* (ready), or a negative errno:
 * -ETIMEDOUT (the wait's own timeout passed), -ECANCELED (the continuation was
 * cancelled, its client left, the daemon stops), -EBADF (the descriptor was closed
 * through ops->close_fd while waited on), -EBUSY (another continuation waits on it). */
enum {
  IO_EV_READ = 1u << 0,  /* readable, or a listening socket has a connection */
  IO_EV_WRITE = 1u << 1, /* writable, or a connect finished */
  IO_EV_ERROR = 1u << 2, /* reported only: an error is pending on it */
  IO_EV_HUP = 1u << 3,   /* reported only: the peer hung up */
  /* A hint with park_fd (never reported): the caller's own read, write, accept ... on
   * `fd` has just failed with EAGAIN, so only readiness that comes after it can matter
   * and the engine need not look at the descriptor again before it parks. Without it a
   * wait resumes at once on a descriptor that is ready already. Engines that predate it
   * ignore it. */
  IO_EV_AFTER_EAGAIN = 1u << 4,
};

/* Values of the spawn `share` argument. */
enum {
  IO_SHARE_ALWAYS = 0,      /* worth stealing at once (a spawner, a large piece of work) */
  IO_SHARE_WHEN_HUNGRY = 1, /* a leaf: stays on this worker unless another is idle */
};

/* The engine's services to a running step. `size` is sizeof(io_ctx_ops) as the engine
 * was built; the C++ layer checks it before calling an operation added later. */
typedef struct io_ctx_ops {
  uint32_t size;
  uint32_t reserved;
  /* The environment of `t` (inline bytes, a buffer in the client's segment, or a
   * serialized job's bytes). Client memory may change underfoot: treat it as data. */
  const uint8_t* (*env)(io_ctx* c, const io_task* t, size_t* len);
  /* Where output bytes go (IO_FN_OUTPUT functions only, else NULL with *capacity 0):
   * the environment itself, writable (the submission's buffer in the client's segment,
   * its inline bytes, or the serialized job's copy). */
  uint8_t* (*output)(io_ctx* c, const io_task* t, size_t* capacity);
  /* The result data is the first `len` bytes of the environment: what output() wrote
   * there, or the environment unchanged (echo). At most the environment's length. */
  void (*set_output_len)(io_ctx* c, size_t len);
  /* Fails the continuation with `err` (IO_ERR_*) and a message (copied; the client
   * sees its first bytes, at most 127). Returns IO_STEP_FAIL. */
  io_step (*fail)(io_ctx* c, uint32_t err, const char* msg, size_t len);
  /* A child continuation of the current one (same client), running `fn` with w0, w1
   * and `aux`; it completes silently (its code reports to its parent). */
  void (*spawn)(io_ctx* c, io_step_fn fn, uint64_t w0, uint64_t w1, uint32_t aux, uint32_t share);
  /* Makes a task that returned IO_STEP_WAIT runnable again, on this worker. */
  void (*resume)(io_ctx* c, io_task* t);
  /* With IO_STEP_PARK: the task resumes (with t->fn) at `steady_ns` (CLOCK_MONOTONIC
   * nanoseconds). Returns 0, or nonzero when the client's timers are at their limit
   * (the task is then failed by the engine; return IO_STEP_PARK anyway). */
  int (*park_until)(io_ctx* c, io_task* t, int64_t steady_ns);
  /* With IO_STEP_MOVED: the task continues (with t->fn) on pool `pool`. Returns 0, or
   * nonzero when there is no such pool (then return something else). */
  int (*move_to)(io_ctx* c, io_task* t, uint32_t pool);
  /* The id of the pool named `name`, or -1. */
  int64_t (*pool_id)(io_ctx* c, const char* name, size_t len);
  uint32_t (*current_pool)(io_ctx* c);
  uint32_t (*worker_index)(io_ctx* c);
  /* Nonzero when the continuation should stop (its client hung up, it was cancelled,
   * the daemon is stopping): fail with IO_ERR_CANCELLED. */
  int (*cancelled)(io_ctx* c, const io_task* t);
  /* CLOCK_MONOTONIC in nanoseconds. */
  int64_t (*now_ns)(io_ctx* c);
  /* The task holds something its code must release (a coroutine frame): when the
   * engine cuts it off (client gone, cancelled, over a limit, shutdown) it runs t->fn
   * once more with io_ctx.cutoff set instead of dropping it. */
  void (*owns_state)(io_ctx* c, io_task* t);
  /* Coroutine frames: memory from the engine's per-worker pools. frame_free may run
   * on another thread than frame_alloc (the continuation migrated). */
  void* (*frame_alloc)(size_t n);
  void (*frame_free)(void* p, size_t n);
  /* Batched child accounting for counting parents (fanout): one finished child of
   * `parent`, whose w0 counts its outstanding children; resumes it at zero. */
  void (*child_done)(io_ctx* c, io_task* parent);

  /* ---- SDK 1.1: the event queue. Check `size` before calling these. ---- */
  /* With IO_STEP_PARK: the task resumes (with t->fn) when descriptor `fd` is ready for
   * `events` (IO_EV_READ and/or IO_EV_WRITE), at `timeout_ns` (CLOCK_MONOTONIC; 0: no
   * timeout), or when cancelled; the outcome goes to *result first (see IO_EV_*).
   * Returns 0; otherwise the task is not parked (*result says why) and the step must
   * not return IO_STEP_PARK. The descriptor stays the caller's. */
  int (*park_fd)(io_ctx* c, io_task* t, int fd, uint32_t events, int64_t timeout_ns,
                 int64_t* result);
  /* With IO_STEP_PARK: resumes when signal `signo` is delivered to the process (*result
   * = signo), at timeout_ns, or when cancelled. The host must route the signal to the
   * event queue (the daemon does for SIGUSR1, SIGUSR2 and SIGRTMIN..SIGRTMIN+7);
   * otherwise returns nonzero with *result = -EINVAL. */
  int (*park_signal)(io_ctx* c, io_task* t, int signo, int64_t timeout_ns, int64_t* result);
  /* Closes `fd` after failing every continuation parked on it with -EBADF. Use it, not
   * close(2), for descriptors continuations may be waiting on. */
  int (*close_fd)(io_ctx* c, int fd);
  /* The continuation's deadline (CLOCK_MONOTONIC ns), 0 when it has none. Past it the
   * engine fails it with "deadline exceeded" at its next step or while it waits. */
  int64_t (*deadline_ns)(io_ctx* c, const io_task* t);
  /* A descriptor the continuation's client passed to the daemon (SCM_RIGHTS), by the id
   * the client got for it; -1 when it has none of that id. Borrowed: do not close it, and
   * look it up again after each suspension (the client may close it meanwhile; a wait on
   * it then ends with -EBADF). */
  int (*client_fd)(io_ctx* c, const io_task* t, uint32_t id);
  /* With IO_STEP_PARK: resumes when the client rings doorbell `bell` (its counter in the
   * segment moves past `seen`; *result = the counter's low 63 bits), at timeout_ns, or
   * when cancelled. Roots of client submissions only; else nonzero, *result = -EINVAL. */
  int (*park_doorbell)(io_ctx* c, io_task* t, uint32_t bell, uint64_t seen, int64_t timeout_ns,
                       int64_t* result);
} io_ctx_ops;

/* The context of one step. The engine's own state follows these fields. */
struct io_ctx {
  const io_ctx_ops* ops;
  uint64_t value;  /* the scalar result; set it before IO_STEP_COMPLETE */
  uint32_t cutoff; /* nonzero: the last call of a task that owns state (ops->owns_state):
                      release it and return IO_STEP_FAIL; the engine reports why */
  uint32_t reserved;
};

/* One function a plugin registers. */
typedef struct io_function_def {
  uint32_t size;    /* sizeof(io_function_def) */
  uint32_t flags;   /* IO_FN_* */
  const char* name; /* without the plugin's prefix: "compress" becomes "zstd.compress" */
  const char* help;
  io_step_fn entry;
  uint64_t max_arg; /* the largest scalar argument accepted (0: any) */
} io_function_def;

/* What the engine passes to a plugin's init(). */
typedef struct io_registrar {
  uint32_t size;
  uint32_t reserved;
  void* host;
  /* Registers one function; returns 0, or nonzero (name taken or invalid, bad flags)
   * after which init() should return nonzero. */
  int (*add)(void* host, const io_function_def* def);
  /* Why init() failed, for the daemon's log line. */
  void (*error)(void* host, const char* msg);
} io_registrar;

/* What a plugin's entry point returns: a static object. */
typedef struct io_plugin_info {
  uint32_t abi_version; /* IO_SDK_ABI_VERSION */
  uint32_t size;        /* sizeof(io_plugin_info) */
  uint32_t sdk_version; /* IO_SDK_VERSION of the headers it was built with */
  uint32_t reserved;
  const char* name;                   /* the namespace of its functions: [a-z0-9_]+ */
  const char* version;                /* free text, shown by insideoutctl plugins */
  int (*init)(const io_registrar* r); /* registers the functions; 0 on success */
  void (*fini)(void);                 /* before the library is unloaded; may be NULL */
} io_plugin_info;

/* The one symbol a plugin exports (INSIDEOUT_PLUGIN in <insideout/sdk.hpp> defines it). */
#define IO_PLUGIN_ENTRY_SYMBOL "insideout_plugin_v1"
typedef const io_plugin_info* (*io_plugin_entry_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* INSIDEOUT_SDK_ABI_H_ */
