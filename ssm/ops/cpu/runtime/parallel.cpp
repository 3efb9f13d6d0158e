#include "cpu/runtime/parallel.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace ssm::cpu {
namespace {

// Workers sleep on a condition variable; each job hands worker i the range i+1
// (range 0 runs on the calling thread).
class Pool {
 public:
  void run(int64_t n, int nthreads, const std::function<void(int64_t, int64_t)>& fn) {
    std::lock_guard<std::mutex> one_job_at_a_time(job_mutex_);
    grow(nthreads - 1);
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      n_ = n;
      parts_ = nthreads;
      pending_ = nthreads - 1;
      ++generation_;
    }
    cv_.notify_all();
    run_part(0);
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [&] { return pending_ == 0; });
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
  void run_part(int part) {
    int64_t chunk = (n_ + parts_ - 1) / parts_;
    int64_t begin = std::min<int64_t>(n_, part * chunk), end = std::min<int64_t>(n_, begin + chunk);
    if (begin < end) (*fn_)(begin, end);
  }

  void grow(int count) {
    while (int(workers_.size()) < count) {
      int index = int(workers_.size());
      workers_.emplace_back([this, index] { loop(index + 1); });
    }
  }

  void loop(int part) {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (part >= parts_) continue;
      lk.unlock();
      run_part(part);
      lk.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  std::mutex job_mutex_, m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
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
