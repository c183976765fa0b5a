// A worker's private run queue, fair by client: one FIFO lane per client that has work
// here, served round robin, one task (one step, or a run of kContinue steps) per turn.
// A client with a million queued tasks (a fanout, a flood of chains) delays another
// client's next task by one task per other lane, not by its whole backlog. Children
// spawned inside the daemon carry their root's client, so they queue in its lane.
//
// Owner only: no atomics. Lanes are found through a table indexed by client slot, and
// emptied lanes keep their storage for reuse, so the busy path does not allocate.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "task.h"

namespace insideout::engine {

class LaneQueue {
 public:
  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }

  void push_back(Task* t) {
    lane_for(t->client).push_back(t);
    ++size_;
  }

  // The task pop_front() returns next; nullptr when empty.
  Task* front() const noexcept {
    if (size_ == 0) return nullptr;
    return lanes_[next_ < lanes_.size() ? next_ : 0].tasks.front();
  }

  // The oldest task of the next lane in turn; nullptr when empty.
  Task* pop_front() {
    if (size_ == 0) return nullptr;
    if (next_ >= lanes_.size()) next_ = 0;
    Lane& lane = lanes_[next_];
    Task* t = lane.tasks.front();
    lane.tasks.pop_front();
    --size_;
    if (lane.tasks.empty()) {
      remove(next_);  // the last lane moves into this index: it is next
    } else {
      ++next_;
    }
    return t;
  }

  // Every task, lanes one after the other (a retiring worker hands them over).
  void drain_into(std::vector<Task*>* out) {
    for (Lane& lane : lanes_) {
      out->insert(out->end(), lane.tasks.begin(), lane.tasks.end());
      lane.tasks.clear();
      index_[lane.client] = 0;
      spare_.push_back(std::move(lane.tasks));
    }
    lanes_.clear();
    size_ = 0;
    next_ = 0;
  }

 private:
  struct Lane {
    std::uint32_t client;
    std::deque<Task*> tasks;
  };

  std::deque<Task*>& lane_for(std::uint32_t client) {
    if (client >= index_.size()) index_.resize(client + 1, 0);
    std::uint32_t& i = index_[client];
    if (i == 0) {
      Lane lane{client, {}};
      if (!spare_.empty()) {
        lane.tasks = std::move(spare_.back());
        spare_.pop_back();
      }
      lanes_.push_back(std::move(lane));
      i = static_cast<std::uint32_t>(lanes_.size());
    }
    return lanes_[i - 1].tasks;
  }

  void remove(std::size_t at) {
    index_[lanes_[at].client] = 0;
    spare_.push_back(std::move(lanes_[at].tasks));
    if (at + 1 != lanes_.size()) {
      lanes_[at] = std::move(lanes_.back());
      index_[lanes_[at].client] = static_cast<std::uint32_t>(at + 1);
    }
    lanes_.pop_back();
  }

  std::vector<Lane> lanes_;           // lanes with work, in no particular order
  std::vector<std::uint32_t> index_;  // by client slot: its lane's index + 1, or 0
  std::vector<std::deque<Task*>> spare_;
  std::size_t next_ = 0;  // the lane whose turn it is
  std::size_t size_ = 0;
};

}  // namespace insideout::engine
