// error.hpp — exceptions thrown for misuse.
//
// Infrastructure trouble (Redis down, corrupt bytes, timeouts) never throws from a read; it is
// counted and reported through metrics and events. These exceptions are thrown only when the *call*
// is wrong, or when the caller asked for a bounded wait that ran out:
//
//   invalid_argument_error  empty key, key longer than stack_options::max_key_bytes, invalid
//                           options
//   type_mismatch_error     get<A>(k) where L1 holds k as type B (in a byte layer a value of
//                           another type is another build's: a miss, see codec.hpp)
//   wait_timeout_error      get_options::wait_deadline passed while waiting on another caller's
//                           fetch
//
// Thread-safety: exception objects are immutable after construction.
#pragma once

#include <stdexcept>
#include <string>

#include "layercache/status.hpp"

namespace layercache {

// Base of every exception the library throws itself. A fetcher's own exceptions pass through
// unchanged (the same std::exception_ptr reaches every waiter).
class error : public std::runtime_error {
 public:
  error(errc code, const std::string& what) : std::runtime_error(what), code_(code) {}
  errc code() const noexcept { return code_; }

 private:
  errc code_;
};

class invalid_argument_error : public error {
 public:
  explicit invalid_argument_error(const std::string& what) : error(errc::invalid_argument, what) {}
};

class type_mismatch_error : public error {
 public:
  explicit type_mismatch_error(const std::string& what) : error(errc::type_mismatch, what) {}
};

class wait_timeout_error : public error {
 public:
  explicit wait_timeout_error(const std::string& what) : error(errc::timeout, what) {}
};

}  // namespace layercache
