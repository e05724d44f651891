// reply_reader.cpp — hiredis's reader building our reply tree directly (see reply_reader.hpp).
#include "redis/reply_reader.hpp"

#include <memory>
#include <utility>

#include "redis/errors.hpp"

namespace layercache::redis_detail {
namespace {

// Custom object functions save the intermediate redisReply (an allocation, a copy of every string
// and a free per reply) that converting from hiredis's default objects would cost. hiredis owns
// the root until redisReaderGetReply hands it over; children live inside their parent's elements
// (sized when the array header is read), so only roots are ever freed on their own.

reply* reply_slot(const redisReadTask* task) {
  if (task->parent != nullptr) {
    auto* parent = static_cast<reply*>(task->parent->obj);
    return &parent->elements[static_cast<std::size_t>(task->idx)];
  }
  return new reply;
}

void* create_string(const redisReadTask* task, char* str, std::size_t len) noexcept {
  try {
    reply* r = reply_slot(task);
    r->type = task->type == REDIS_REPLY_ERROR    ? reply::kind::error
              : task->type == REDIS_REPLY_STATUS ? reply::kind::status
                                                 : reply::kind::string;
    r->str.assign(str, len);
    return r;
  } catch (...) {
    return nullptr;  // hiredis reports "Out of memory" and the connection is dropped
  }
}

void* create_array(const redisReadTask* task, int elements) noexcept {
  try {
    reply* r = reply_slot(task);
    r->type = reply::kind::array;
    if (elements > 0) r->elements.resize(static_cast<std::size_t>(elements));
    return r;
  } catch (...) {
    return nullptr;
  }
}

void* create_integer(const redisReadTask* task, long long value) noexcept {
  try {
    reply* r = reply_slot(task);
    r->type = reply::kind::integer;
    r->integer = value;
    return r;
  } catch (...) {
    return nullptr;
  }
}

void* create_nil(const redisReadTask* task) noexcept {
  try {
    reply* r = reply_slot(task);
    r->type = reply::kind::nil;
    return r;
  } catch (...) {
    return nullptr;
  }
}

void free_reply(void* root) noexcept { delete static_cast<reply*>(root); }

redisReplyObjectFunctions k_reply_functions = {create_string, create_array, create_integer,
                                               create_nil, free_reply};

}  // namespace

redisReader* make_reader() { return redisReaderCreateWithFunctions(&k_reply_functions); }

// Takes the next complete reply off the reader: 1 = got one, 0 = need more bytes, -1 = bad stream.
int next_reply(redisReader* rdr, reply& out) {
  void* raw = nullptr;
  if (redisReaderGetReply(rdr, &raw) != REDIS_OK) return -1;
  if (raw == nullptr) return 0;
  std::unique_ptr<reply> root(static_cast<reply*>(raw));
  out = std::move(*root);
  return 1;
}

result to_result(reply&& r) {
  result out;
  if (r.type == reply::kind::error) out.error = error_reply_status(r.str);
  out.value = std::move(r);
  return out;
}

}  // namespace layercache::redis_detail
