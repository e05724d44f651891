#include "layercache/status.hpp"

namespace layercache {

std::string_view to_string(errc code) noexcept {
  switch (code) {
    case errc::ok:
      return "ok";
    case errc::unavailable:
      return "unavailable";
    case errc::timeout:
      return "timeout";
    case errc::corruption:
      return "corruption";
    case errc::invalid_argument:
      return "invalid_argument";
    case errc::resource_exhausted:
      return "resource_exhausted";
    case errc::type_mismatch:
      return "type_mismatch";
    case errc::internal:
      return "internal";
  }
  return "unknown";
}

status::status(errc code, std::string message) {
  if (code != errc::ok) rep_ = std::make_unique<rep>(rep{code, std::move(message), {}});
}

status::status(const status& other)
    : rep_(other.rep_ ? std::make_unique<rep>(*other.rep_) : nullptr) {}

status& status::operator=(const status& other) {
  if (this != &other) rep_ = other.rep_ ? std::make_unique<rep>(*other.rep_) : nullptr;
  return *this;
}

status status::layer_error(std::string_view layer, errc code, std::string message) {
  status s(code, message);
  if (s.rep_) s.rep_->failures.push_back({std::string(layer), code, std::move(message)});
  return s;
}

errc status::code() const noexcept { return rep_ ? rep_->code : errc::ok; }

std::string status::message() const {
  if (!rep_) return "ok";
  if (rep_->failures.empty()) {
    return std::string(to_string(rep_->code)) + ": " + rep_->message;
  }
  std::string out;
  for (const auto& f : rep_->failures) {
    if (!out.empty()) out += "; ";
    out += f.layer;
    out += ": ";
    out += to_string(f.code);
    out += ": ";
    out += f.message;
  }
  return out;
}

const std::vector<layer_failure>& status::failures() const noexcept {
  static const std::vector<layer_failure> none;
  return rep_ ? rep_->failures : none;
}

void status::update(const status& other) {
  if (other.ok()) return;
  if (!rep_) {
    rep_ = std::make_unique<rep>(*other.rep_);
    return;
  }
  if (other.rep_->failures.empty()) {
    rep_->failures.push_back({"", other.rep_->code, other.rep_->message});
  } else {
    rep_->failures.insert(rep_->failures.end(), other.rep_->failures.begin(),
                          other.rep_->failures.end());
  }
}

}  // namespace layercache
