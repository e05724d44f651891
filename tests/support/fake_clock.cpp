// fake_clock is header-only; this file keeps the support library non-empty on every configuration.
#include "support/fake_clock.hpp"
