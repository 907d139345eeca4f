// Environment switches of the C++ code. Read on every call (not cached), so that a test can
// set or clear one between calls of the same process.
#pragma once

#include <cctype>
#include <cstdlib>
#include <string>

namespace lmini {

// A flag is on when its value is 1, true, yes or on, in any case (the rule of setup.py's
// build flags too); unset, empty or anything else is off.
inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return false;
  std::string s(v);
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s == "1" || s == "true" || s == "yes" || s == "on";
}

}  // namespace lmini
