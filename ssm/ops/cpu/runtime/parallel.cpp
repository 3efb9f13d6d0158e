#include "cpu/runtime/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace ssm::cpu {
namespace {

// Workers sleep on a condition variable. A job is cut into up to kChunksPerThread x nthreads
// contiguous chunks that the calling thread and the woken workers claim from an atomic counter,
// so a worker that the OS has not scheduled yet (a busy or oversubscribed machine: torch's own
// threads spinning after a matmul) delays nothing: the others take its chunks. A worker that
// wakes after the caller finished finds the job closed and goes back to sleep.
constexpr int64_t kChunksPerThread = 4;

class Pool {
 public:
  void run(int64_t n, int nthreads, const std::function<void(int64_t, int64_t)>& fn) {
    std::lock_guard<std::mutex> one_job_at_a_time(job_mutex_);
    grow(nthreads - 1);
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      n_ = n;
      chunks_ = std::min<int64_t>(n, kChunksPerThread * nthreads);
      next_.store(0, std::memory_order_relaxed);
      helpers_wanted_ = nthreads - 1;
      open_ = true;
      ++generation_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(m_);
    open_ = false;  // every chunk is claimed; wait for the workers still running theirs
    done_cv_.wait(lk, [&] { return active_ == 0; });
    fn_ = nullptr;
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  void work() {
    for (int64_t c = next_.fetch_add(1); c < chunks_; c = next_.fetch_add(1)) {
      const int64_t begin = c * n_ / chunks_, end = (c + 1) * n_ / chunks_;
      if (begin < end) (*fn_)(begin, end);
    }
  }

  void grow(int count) {
    while (int(workers_.size()) < count) workers_.emplace_back([this] { loop(); });
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (!open_ || helpers_wanted_ == 0) continue;
      --helpers_wanted_;
      ++active_;
      lk.unlock();
      work();
      lk.lock();
      if (--active_ == 0) done_cv_.notify_one();
    }
  }

  std::mutex job_mutex_, m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunks_ = 0;
  std::atomic<int64_t> next_{0};
  int helpers_wanted_ = 0, active_ = 0;
  uint64_t generation_ = 0;
  bool open_ = false, stop_ = false;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: workers may outlive static teardown
  return *p;
}

}  // namespace

void parallel_for(int64_t n, int nthreads, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  nthreads = int(std::max<int64_t>(1, std::min<int64_t>(nthreads, n)));
  if (nthreads == 1) {
    fn(0, n);
    return;
  }
  pool().run(n, nthreads, fn);
}

}  // namespace ssm::cpu
