// status.hpp — the result of a mutation (set, del, invalidations) and the error codes of the
// library.
//
// A `status` says whether an operation succeeded in every layer and, if not, which layers failed
// and why. An ok status costs nothing (no allocation); a failed one owns a small heap record.
//
//   layercache::status s = cache.set<std::string>("k", "v");
//   if (!s.ok() && s.code() == layercache::errc::unavailable) { /* retry later */ }
//
// Thread-safety: a status is a value type; distinct objects may be used from different threads,
// one object is not synchronised.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace layercache {

// What the caller should do about an error is encoded in the code.
enum class errc : unsigned char {
  ok = 0,
  unavailable,         // backend unreachable or circuit open: retry later, other layers may answer
  timeout,             // deadline passed: the operation may or may not have happened
  corruption,          // stored bytes failed validation: the entry was dropped
  invalid_argument,    // caller error: fix the call, do not retry
  resource_exhausted,  // value or key too large, disk full: shrink or free space
  type_mismatch,       // a key was read as a type other than the one it holds
  internal,            // a bug or an unexpected backend reply
};

// Human-readable name of a code ("ok", "unavailable", ...).
std::string_view to_string(errc code) noexcept;

// One layer's failure inside a status.
struct layer_failure {
  std::string layer;  // the layer's name(), e.g. "memory", "redis"
  errc code = errc::ok;
  std::string message;
};

class [[nodiscard]] status {
 public:
  status() noexcept = default;  // ok
  status(errc code, std::string message);
  status(const status& other);
  status& operator=(const status& other);
  status(status&&) noexcept = default;
  status& operator=(status&&) noexcept = default;
  ~status() = default;

  static status ok_status() noexcept { return status(); }
  // A failure attributed to one layer.
  static status layer_error(std::string_view layer, errc code, std::string message);

  bool ok() const noexcept { return rep_ == nullptr; }
  explicit operator bool() const noexcept { return ok(); }
  // The first failure's code, or errc::ok.
  errc code() const noexcept;
  // "ok", or every failure as "layer: code: message; ...".
  std::string message() const;
  // Every layer that failed, in stack order. Empty when ok or when the failure is not per layer.
  const std::vector<layer_failure>& failures() const noexcept;

  // Merges `other`'s failures into this status (used to combine per-layer results).
  void update(const status& other);

 private:
  struct rep {
    errc code;
    std::string message;
    std::vector<layer_failure> failures;
  };
  std::unique_ptr<rep> rep_;
};

}  // namespace layercache
