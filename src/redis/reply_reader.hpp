// reply_reader.hpp — turns the bytes a Redis connection receives into redis_client replies, with
// hiredis's redisReader building our reply type through its object-function hooks (no
// intermediate redisReply: no extra allocation, copy and free per reply). Used by
// hiredis_client.cpp; nothing here parses RESP by hand.
//
// Not API. Thread-safety: a reader belongs to one thread at a time (the connection's reader role);
// the functions have no shared state.
#pragma once

#include <hiredis/hiredis.h>

#include "redis/redis_client.hpp"

namespace layercache::redis_detail {

// A reader whose replies are `reply` trees (free with redisReaderFree). Null when out of memory.
redisReader* make_reader();

// Takes the next complete reply off the reader: 1 = got one, 0 = need more bytes, -1 = bad stream.
int next_reply(redisReader* rdr, reply& out);

// A reply as a call's result: an error reply also sets `error` (classified by errors.hpp).
result to_result(reply&& r);

}  // namespace layercache::redis_detail
