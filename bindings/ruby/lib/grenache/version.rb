# frozen_string_literal: true

module Grenache
  # The version of this gem (the C library's is {Grenache.version}).
  VERSION = '0.1.0'
end
