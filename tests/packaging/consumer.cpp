// A program a user of the installed package would write: proves the public headers are
// self-contained and the exported targets link.
#include <cstdio>
#include <layercache/layercache.hpp>
#include <string>

int main() {
  using namespace std::chrono_literals;
  layercache::cache_stack cache({layercache::memory_layer::create({.max_entries = 100})},
                                {.ttl = 1min});
  int calls = 0;
  for (int i = 0; i < 3; ++i) {
    auto v = cache.get<std::string>("greeting", [&] {
      ++calls;
      return std::string("hello");
    });
    if (!v || *v != "hello") return 1;
  }
  std::printf("consumer: fetcher called %d time(s)\n", calls);
  return calls == 1 ? 0 : 1;
}
