// detail/function_ref.hpp — a non-owning reference to a callable (no allocation), for passing a
// caller's fetcher into cache_stack's non-template core. Not API.
// Thread-safety: a function_ref is as thread-safe as the callable it refers to; it must not outlive
// it.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace layercache::detail {

template <class Signature>
class function_ref;

template <class R, class... Args>
class function_ref<R(Args...)> {
 public:
  template <class F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, function_ref> &&
           std::is_invocable_r_v<R, F&, Args...>) function_ref(F&& f)
  noexcept  // NOLINT(google-explicit-constructor): used like std::function
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<Args>(args)...);
        }) {}

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

}  // namespace layercache::detail
