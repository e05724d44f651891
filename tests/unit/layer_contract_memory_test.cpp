// layer_contract_memory_test.cpp — the layer contract suite (layer_contract.hpp) over the layers
// that need no server: the memory layer, and the in-memory test byte layer standing in for a byte
// layer so the stack's byte paths run too. The Redis and disk layers instantiate the same suite
// from tests/integration/.
#include "layer_contract.hpp"
#include "layercache/memory_layer.hpp"
#include "test_byte_layer.hpp"

namespace layercache::test {
namespace {

using layers = std::vector<std::shared_ptr<layer>>;

INSTANTIATE_TEST_SUITE_P(
    InProcess, LayerContractTest,
    ::testing::Values(layer_factory{"Memory",
                                    [](std::shared_ptr<const clock> c) {
                                      return layers{memory_layer::create({.clock = c})};
                                    }},
                      layer_factory{"MemoryWTinyLfu",
                                    [](std::shared_ptr<const clock> c) {
                                      return layers{memory_layer::create(
                                          {.policy = eviction::w_tinylfu, .clock = c})};
                                    }},
                      layer_factory{"MemoryAndBytes",
                                    [](std::shared_ptr<const clock> c) {
                                      return layers{memory_layer::create({.clock = c}),
                                                    test_byte_layer::create({.clock = c})};
                                    }},
                      layer_factory{"BytesOnly",
                                    [](std::shared_ptr<const clock> c) {
                                      return layers{test_byte_layer::create({.clock = c})};
                                    }},
                      layer_factory{"MemoryAndTwoCompressedByteLayers",
                                    [](std::shared_ptr<const clock> c) {
                                      return layers{
                                          memory_layer::create({.clock = c}),
                                          test_byte_layer::create({.name = "zstd",
                                                                   .clock = c,
                                                                   .compress = compression::zstd,
                                                                   .compress_min_bytes = 16}),
                                          test_byte_layer::create({.name = "lz4",
                                                                   .clock = c,
                                                                   .compress = compression::lz4,
                                                                   .compress_min_bytes = 16})};
                                    }}),
    layer_factory_name);

}  // namespace
}  // namespace layercache::test
