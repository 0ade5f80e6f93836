#include "metadata.hpp"

#include <cctype>
#include <cstdlib>
#include <stdexcept>

namespace ssondo {
namespace {

class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}

  // Finds `key` at the top level and leaves the cursor at the start of its value.
  void seek_top_level(const std::string& key) {
    skip_ws();
    expect('{');
    skip_ws();
    if (peek() == '}') missing(key);
    while (true) {
      skip_ws();
      const std::string k = parse_string();
      skip_ws();
      expect(':');
      skip_ws();
      if (k == key) return;
      skip_value();
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      expect('}');
      missing(key);
    }
  }

  double parse_number(const std::string& key) {
    const char* begin = s_.c_str() + i_;
    char* end = nullptr;
    const double v = std::strtod(begin, &end);
    if (end == begin || (*begin != '-' && !std::isdigit(static_cast<unsigned char>(*begin)))) {
      throw std::invalid_argument("metadata: value of \"" + key + "\" is not a number");
    }
    i_ += static_cast<std::size_t>(end - begin);
    return v;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      const char c = next();
      if (c == '"') return out;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      const char e = next();
      switch (e) {
        case 'n': out.push_back('\n'); break;
        case 't': out.push_back('\t'); break;
        case 'r': out.push_back('\r'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'u': out += "\\u"; break;
        default: out.push_back(e);  // \" \\ \/
      }
    }
  }

  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }

 private:
  char next() {
    if (i_ >= s_.size()) throw std::invalid_argument("metadata: JSON ends unexpectedly");
    return s_[i_++];
  }
  void expect(char c) {
    if (next() != c) {
      throw std::invalid_argument(std::string("metadata: invalid JSON, expected '") + c +
                                  "' at offset " + std::to_string(i_ - 1));
    }
  }
  void skip_ws() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  // Skips one JSON value of any kind (nesting tracked, strings honoured).
  void skip_value() {
    if (peek() == '"') {
      parse_string();
      return;
    }
    int depth = 0;
    while (true) {
      const char c = peek();
      if (c == '\0') throw std::invalid_argument("metadata: JSON ends unexpectedly");
      if (c == '"') {
        parse_string();
        continue;
      }
      if (depth == 0 && (c == ',' || c == '}')) return;
      if (c == '{' || c == '[') ++depth;
      if (c == '}' || c == ']') --depth;
      ++i_;
      if (depth == 0 && (c == '}' || c == ']')) return;
    }
  }
  [[noreturn]] static void missing(const std::string& key) {
    throw std::invalid_argument("metadata: key \"" + key + "\" not found");
  }

  const std::string& s_;
  std::size_t i_ = 0;
};

}  // namespace

double json_number(const std::string& json, const std::string& key) {
  Reader r(json);
  r.seek_top_level(key);
  return r.parse_number(key);
}

std::string json_string(const std::string& json, const std::string& key) {
  Reader r(json);
  r.seek_top_level(key);
  if (r.peek() != '"') throw std::invalid_argument("metadata: value of \"" + key + "\" is not a string");
  return r.parse_string();
}

}  // namespace ssondo
