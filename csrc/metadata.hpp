// Reading values from the JSON metadata that ssondo writes into its files (ssondo.json inside an
// exported TorchScript student). A small, strict JSON reader: enough to look up top-level keys.
#pragma once

#include <string>

namespace ssondo {

// Returns the number stored under the top-level key `key` of the JSON object `json`.
// Throws std::invalid_argument if `json` is not a JSON object, the key is missing, or its value
// is not a number.
double json_number(const std::string& json, const std::string& key);

// Returns the string stored under the top-level key `key` (escapes decoded: \" \\ \/ \n \t ...;
// \uXXXX is kept verbatim). Throws std::invalid_argument as json_number does.
std::string json_string(const std::string& json, const std::string& key);

}  // namespace ssondo
