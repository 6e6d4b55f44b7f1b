// bevkd internal: POSIX file helpers: a read-only memory map and an all-or-nothing file write (temp, fsync, rename).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "../format_error.hpp"

namespace bevkd {
namespace detail {

/// @brief The text of the current errno, for messages.
inline std::string errno_text() { return std::strerror(errno); }

/// @brief A read-only private memory map of a whole file (empty files map to nothing).
class mapped_file {
 public:
  mapped_file() = default;
  /// @brief Maps `path`; throws bevkd::format_error when it cannot be opened or mapped.
  explicit mapped_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw format_error(path, "cannot open: " + errno_text());
    struct stat info {};
    if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
      ::close(fd);
      throw format_error(path, "not a regular file");
    }
    size_ = static_cast<std::size_t>(info.st_size);
    if (size_ > 0) {
      void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (mapped == MAP_FAILED) {
        ::close(fd);
        throw format_error(path, "cannot map: " + errno_text());
      }
      data_ = static_cast<const unsigned char*>(mapped);
    }
    ::close(fd);  // the mapping keeps the file alive
  }
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  /// @brief Takes over another mapping.
  mapped_file(mapped_file&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  /// @brief Takes over another mapping.
  mapped_file& operator=(mapped_file&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }
  ~mapped_file() {
    if (data_) ::munmap(const_cast<unsigned char*>(data_), size_);
  }

  /// @brief First byte (null for an empty file).
  const unsigned char* data() const { return data_; }
  /// @brief File size in bytes.
  std::size_t size() const { return size_; }

 private:
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
};

/// @brief Writes a file all or nothing: chunks go to a temporary in the same directory, then fsync and rename.
///
/// A reader never sees a partial output: if anything fails, or the object is destroyed before
/// commit(), the temporary is removed and the destination is untouched.
class atomic_file_writer {
 public:
  /// @brief Creates the temporary next to `path`; throws bevkd::format_error when it cannot.
  explicit atomic_file_writer(std::string path) : path_(std::move(path)) {
    const std::size_t slash = path_.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "" : path_.substr(0, slash + 1);
    const std::string base = slash == std::string::npos ? path_ : path_.substr(slash + 1);
    std::string pattern = dir + "." + base + ".tmp.XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    fd_ = ::mkstemp(buffer.data());
    if (fd_ < 0) throw format_error(path_, "cannot create a temporary file next to it: " + errno_text());
    temp_ = buffer.data();
  }
  atomic_file_writer(const atomic_file_writer&) = delete;
  atomic_file_writer& operator=(const atomic_file_writer&) = delete;
  ~atomic_file_writer() { abandon(); }

  /// @brief Appends bytes to the temporary.
  void write(const void* data, std::size_t bytes) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
      const ::ssize_t n = ::write(fd_, p, bytes);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("write failed: " + errno_text());
      p += n;
      bytes -= static_cast<std::size_t>(n);
    }
  }

  /// @brief Flushes the temporary to disk and renames it over the destination.
  void commit() {
    if (::fchmod(fd_, 0644) != 0 || ::fsync(fd_) != 0) fail("fsync failed: " + errno_text());
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) fail("close failed: " + errno_text());
    if (::rename(temp_.c_str(), path_.c_str()) != 0) fail("rename failed: " + errno_text());
    temp_.clear();
  }

 private:
  [[noreturn]] void fail(const std::string& problem) {
    abandon();
    throw format_error(path_, problem);
  }

  void abandon() noexcept {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
    if (!temp_.empty()) ::unlink(temp_.c_str());
    temp_.clear();
  }

  std::string path_;
  std::string temp_;
  int fd_ = -1;
};

}  // namespace detail
}  // namespace bevkd
