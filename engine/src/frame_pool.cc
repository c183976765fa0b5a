// Coroutine frames for continuation code (io_ctx_ops::frame_alloc/frame_free).
//
// Per-thread free lists in size classes of 64 bytes up to 4 KiB, each kept at most
// kKeep long; larger frames and the overflow go to the heap. A frame freed on another
// thread than the one that made it (the continuation migrated) joins the freeing
// thread's list, so the memory follows the work, as the task pool's does. The lists live
// in the engine, not in the plugins, so unloading a plugin leaves no thread-local state
// behind.
#include <cstddef>
#include <new>

#include "task.h"

namespace insideout::engine {
namespace {

constexpr std::size_t kGrain = 64, kClasses = 64, kKeep = 256;

struct Node {
  Node* next;
};

struct Lists {
  Node* head[kClasses] = {};
  std::size_t count[kClasses] = {};
  ~Lists() {
    for (auto* h : head) {
      while (h != nullptr) {
        Node* n = h;
        h = h->next;
        ::operator delete(n);
      }
    }
  }
};

thread_local Lists lists;

}  // namespace

void* frame_allocate(std::size_t n) noexcept {
  const std::size_t k = (n + kGrain - 1) / kGrain;
  if (k >= 1 && k <= kClasses && lists.head[k - 1] != nullptr) {
    Node* node = lists.head[k - 1];
    lists.head[k - 1] = node->next;
    --lists.count[k - 1];
    return node;
  }
  return ::operator new(k* kGrain, std::nothrow);
}

void frame_release(void* p, std::size_t n) noexcept {
  const std::size_t k = (n + kGrain - 1) / kGrain;
  if (k >= 1 && k <= kClasses && lists.count[k - 1] < kKeep) {
    auto* node = static_cast<Node*>(p);
    node->next = lists.head[k - 1];
    lists.head[k - 1] = node;
    ++lists.count[k - 1];
    return;
  }
  ::operator delete(p);
}

}  // namespace insideout::engine
